//! `pva-worker verify FILE [--trust-anchors CA.pem] [--json]`: prints an image's provenance — whether
//! its C2PA manifest is valid (and trusted, given anchors), its actions, digital source type and
//! software agent, and the IPTC source type in its XMP — so a CMS team can check files they
//! received. A thin command over [`crate::provenance::verify`]; needs no model and no settings.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::provenance::{self, ProvenanceError, Report};

/// What `verify` was asked to do.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The image to check (PNG, JPEG or WebP).
    pub file: PathBuf,
    /// PEM bundle of trusted root certificates; without it the signer is not checked.
    pub trust_anchors: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    pub json: bool,
}

/// Why `verify` could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum VerifyCmdError {
    /// The image or the trust anchors could not be read.
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The trust anchors are not UTF-8 PEM text.
    #[error("trust anchors {0} are not PEM text")]
    AnchorsNotText(PathBuf),
    /// Not an image verify reads, or unusable trust anchors.
    #[error("{path}: {source}")]
    Provenance {
        path: PathBuf,
        #[source]
        source: ProvenanceError,
    },
    /// The report could not be written to the output.
    #[error("writing the report failed")]
    Write(#[from] std::io::Error),
}

/// Verifies `options.file`, writes the report to `out` and returns it; the caller turns
/// [`Report::valid`] into the exit code.
pub fn run(options: &VerifyOptions, out: &mut dyn Write) -> Result<Report, VerifyCmdError> {
    let bytes = read(&options.file, "image")?;
    let anchors = match &options.trust_anchors {
        Some(path) => Some(
            String::from_utf8(read(path, "trust anchors")?)
                .map_err(|_| VerifyCmdError::AnchorsNotText(path.clone()))?,
        ),
        None => None,
    };
    let report = provenance::verify(&bytes, anchors.as_deref()).map_err(|source| {
        VerifyCmdError::Provenance {
            path: options.file.clone(),
            source,
        }
    })?;
    if options.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        write_text(&options.file, &report, out)?;
    }
    Ok(report)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, VerifyCmdError> {
    std::fs::read(path).map_err(|source| VerifyCmdError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The human-readable report.
fn write_text(file: &Path, r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let verdict = match (r.signed, r.valid, r.trust_checked) {
        (false, _, _) => "NOT SIGNED (no C2PA manifest)",
        (true, true, true) => "VALID (signed by a trusted certificate)",
        (true, true, false) => "VALID (intact; signer not checked: give --trust-anchors)",
        (true, false, _) => "INVALID",
    };
    writeln!(out, "{}: {verdict}", file.display())?;
    writeln!(out, "  format:              {}", r.format)?;
    if let Some(state) = &r.state {
        writeln!(out, "  c2pa state:          {state}")?;
    }
    if let Some(generator) = &r.claim_generator {
        writeln!(out, "  claim generator:     {generator}")?;
    }
    if let Some(signer) = &r.signed_by {
        writeln!(out, "  signed by:           {signer}")?;
    }
    for parent in &r.parents {
        writeln!(out, "  parent ingredient:   {parent}")?;
    }
    for action in &r.actions {
        writeln!(out, "  action:              {}", action.action)?;
        if let Some(dst) = &action.digital_source_type {
            writeln!(out, "    source type:       {dst}")?;
        }
        if let Some(agent) = &action.software_agent {
            writeln!(out, "    software agent:    {agent}")?;
        }
    }
    if r.signed {
        writeln!(out, "  thumbnails:          {}", r.thumbnails)?;
    }
    writeln!(
        out,
        "  XMP source type:     {}",
        r.xmp_source_type.as_deref().unwrap_or("(none)")
    )?;
    for error in &r.validation_errors {
        writeln!(out, "  validation:          {error}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::image::OutputFormat;
    use crate::provenance::{mark, OutputProvenance, DIGITAL_SOURCE_TYPE};

    fn unsigned_png(dir: &Path) -> PathBuf {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]));
        let png = crate::pipeline::image::encode(&img, OutputFormat::Png).unwrap();
        let marked = mark(
            &png,
            OutputFormat::Png,
            &OutputProvenance::new("m", "1", None),
            None,
        )
        .unwrap();
        let path = dir.join("out.png");
        std::fs::write(&path, marked).unwrap();
        path
    }

    #[test]
    fn text_and_json_reports_of_an_unsigned_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = unsigned_png(dir.path());
        let mut text = Vec::new();
        let options = VerifyOptions {
            file: file.clone(),
            trust_anchors: None,
            json: false,
        };
        let report = run(&options, &mut text).unwrap();
        assert!(!report.valid);
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("NOT SIGNED"), "{text}");
        assert!(text.contains(DIGITAL_SOURCE_TYPE), "{text}");

        let mut json = Vec::new();
        run(
            &VerifyOptions {
                json: true,
                ..options
            },
            &mut json,
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["signed"], false);
        assert_eq!(value["xmp_source_type"], DIGITAL_SOURCE_TYPE);
    }

    #[test]
    fn missing_files_and_non_images_are_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let err = run(
            &VerifyOptions {
                file: missing.clone(),
                trust_anchors: None,
                json: false,
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing.png"), "{err}");

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let err = run(
            &VerifyOptions {
                file: text,
                trust_anchors: None,
                json: false,
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(err, VerifyCmdError::Provenance { .. }), "{err}");

        let file = unsigned_png(dir.path());
        let err = run(
            &VerifyOptions {
                file,
                trust_anchors: Some(missing),
                json: false,
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("trust anchors"), "{err}");
    }
}
