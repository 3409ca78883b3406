//! Reading an image's provenance back: the C2PA manifest (validated, optionally against trust
//! anchors) and the XMP digital source type, as a [`Report`].

use std::io::Cursor;

use c2pa::assertions::Actions;
use c2pa::{ClaimGeneratorInfo, DigitalSourceType, Reader};
use serde::Serialize;

use super::container::{read_xmp, xmp_digital_source_type, Container};
use super::signer::{c2pa_context, pem_certificate_count};
use super::ProvenanceError;

/// One action of the manifest, as [`verify`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionReport {
    /// The action (`c2pa.opened`, `c2pa.edited`, ...).
    pub action: String,
    /// Its digital source type, if it has one.
    pub digital_source_type: Option<String>,
    /// Its software agent (`name version (model ...)`), if it has one.
    pub software_agent: Option<String>,
}

/// What [`verify`] found in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The image's MIME type.
    pub format: &'static str,
    /// Whether the file has a C2PA manifest.
    pub signed: bool,
    /// The manifest is intact and its signature valid — and, when trust anchors were given, the
    /// signing certificate chains to one of them. False for an unsigned file.
    pub valid: bool,
    /// c2pa's validation state: `Invalid`, `Valid` (intact, signer not trusted or not checked) or
    /// `Trusted`; `None` without a manifest.
    pub state: Option<String>,
    /// Whether trust anchors were given (otherwise `valid` does not vouch for the signer).
    pub trust_checked: bool,
    /// The claim generator (`name version`) of the active manifest.
    pub claim_generator: Option<String>,
    /// The signing certificate's issuer organisation and common name, as c2pa reads them.
    pub signed_by: Option<String>,
    /// The active manifest's actions, in order.
    pub actions: Vec<ActionReport>,
    /// The digital source type of the first action that has one.
    pub digital_source_type: Option<String>,
    /// The titles of the parent ingredients.
    pub parents: Vec<String>,
    /// Thumbnails in the active manifest and its ingredients (ours carry none).
    pub thumbnails: usize,
    /// Validation failures (`code: explanation`); a signer outside the trust anchors shows up as
    /// `signingCredential.untrusted`.
    pub validation_errors: Vec<String>,
    /// The `Iptc4xmpExt:DigitalSourceType` in the file's XMP, if any.
    pub xmp_source_type: Option<String>,
}

/// Reads an image's provenance: the C2PA manifest (validated, against `trust_anchors_pem` when
/// given) and the XMP digital source type. Errors only for a file that is not a PNG, JPEG or
/// WebP, or trust anchors that are not PEM certificates; a damaged or missing manifest is a
/// report with `valid: false`.
pub fn verify(bytes: &[u8], trust_anchors_pem: Option<&str>) -> Result<Report, ProvenanceError> {
    let container = Container::detect(bytes)?;
    if let Some(pem) = trust_anchors_pem {
        if pem_certificate_count(pem.as_bytes()) == 0 {
            return Err(ProvenanceError::TrustAnchors(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) in the bundle".into(),
            ));
        }
    }
    let context = c2pa_context(trust_anchors_pem)
        .map_err(|e| ProvenanceError::TrustAnchors(e.to_string()))?;
    let mut report = Report {
        format: container.mime(),
        signed: false,
        valid: false,
        state: None,
        trust_checked: trust_anchors_pem.is_some(),
        claim_generator: None,
        signed_by: None,
        actions: Vec::new(),
        digital_source_type: None,
        parents: Vec::new(),
        thumbnails: 0,
        validation_errors: Vec::new(),
        xmp_source_type: read_xmp(bytes, container)
            .as_deref()
            .and_then(xmp_digital_source_type),
    };
    let reader =
        match Reader::from_context(context).with_stream(container.mime(), Cursor::new(bytes)) {
            Ok(reader) => reader,
            Err(c2pa::Error::JumbfNotFound) => return Ok(report),
            Err(e) => {
                // A manifest is there but could not be read (damaged, or the asset around it is).
                report.signed = true;
                report.state = Some("Invalid".into());
                report.validation_errors.push(e.to_string());
                return Ok(report);
            }
        };
    report.signed = true;
    let state = reader.validation_state();
    report.state = Some(format!("{state:?}"));
    report.validation_errors = validation_errors(&reader);
    report.valid = match state {
        c2pa::ValidationState::Trusted => true,
        c2pa::ValidationState::Valid => trust_anchors_pem.is_none(),
        c2pa::ValidationState::Invalid => false,
    };
    if let Some(manifest) = reader.active_manifest() {
        report.claim_generator = manifest
            .claim_generator_info
            .as_ref()
            .and_then(|infos| infos.first())
            .map(generator_text);
        report.signed_by = manifest.signature_info().map(|s| {
            [s.issuer.as_deref(), s.common_name.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" / ")
        });
        for assertion in manifest.assertions() {
            if !assertion.label().starts_with(Actions::LABEL) {
                continue;
            }
            let Ok(actions) = assertion.to_assertion::<Actions>() else {
                report.validation_errors.push(format!(
                    "{}: unreadable actions assertion",
                    assertion.label()
                ));
                continue;
            };
            for action in actions.actions() {
                report.actions.push(ActionReport {
                    action: action.action().to_string(),
                    digital_source_type: action.source_type().and_then(source_type_text),
                    software_agent: action.software_agent().map(agent_text),
                });
            }
        }
        report.digital_source_type = report
            .actions
            .iter()
            .find_map(|a| a.digital_source_type.clone());
        report.parents = manifest
            .ingredients()
            .iter()
            .filter(|i| i.is_parent())
            .map(|i| i.title().unwrap_or("").to_string())
            .collect();
        report.thumbnails = usize::from(manifest.thumbnail_ref().is_some())
            + manifest
                .ingredients()
                .iter()
                .filter(|i| i.thumbnail_ref().is_some())
                .count();
    }
    Ok(report)
}

/// The failure codes (with explanations) of the active manifest and of the ingredients.
fn validation_errors(reader: &Reader) -> Vec<String> {
    let line = |s: &c2pa::validation_status::ValidationStatus| match s.explanation() {
        Some(explanation) => format!("{}: {explanation}", s.code()),
        None => s.code().to_string(),
    };
    match reader.validation_results() {
        Some(results) => {
            let mut errors: Vec<String> = results
                .active_manifest()
                .map(|codes| codes.failure().iter().map(line).collect())
                .unwrap_or_default();
            for delta in results.ingredient_deltas().into_iter().flatten() {
                errors.extend(delta.validation_deltas().failure().iter().map(line));
            }
            errors
        }
        None => reader
            .validation_status()
            .unwrap_or_default()
            .iter()
            .filter(|s| !s.passed())
            .map(line)
            .collect(),
    }
}

/// A digital source type as its URL.
fn source_type_text(source_type: &DigitalSourceType) -> Option<String> {
    match serde_json::to_value(source_type).ok()? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// `name version` of a claim generator.
fn generator_text(info: &ClaimGeneratorInfo) -> String {
    match &info.version {
        Some(version) => format!("{} {version}", info.name),
        None => info.name.clone(),
    }
}

/// `name version (model ...)` of an action's software agent.
fn agent_text(agent: &c2pa::assertions::SoftwareAgent) -> String {
    match agent {
        c2pa::assertions::SoftwareAgent::String(s) => s.clone(),
        c2pa::assertions::SoftwareAgent::ClaimGeneratorInfo(info) => {
            let mut text = generator_text(info);
            if let Some(serde_json::Value::String(model)) = info.get("model") {
                text.push_str(&format!(" (model {model})"));
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::image::OutputFormat;
    use crate::provenance::test_support::encoded;
    use crate::provenance::{mark, OutputProvenance, DIGITAL_SOURCE_TYPE};

    #[test]
    fn verify_reports_an_unsigned_file_as_not_valid() {
        let info = OutputProvenance::new("m", "1", None);
        let marked = mark(&encoded(OutputFormat::Png), OutputFormat::Png, &info, None).unwrap();
        let report = verify(&marked, None).unwrap();
        assert!(!report.signed && !report.valid);
        assert_eq!(report.xmp_source_type.as_deref(), Some(DIGITAL_SOURCE_TYPE));
        assert!(matches!(
            verify(&marked, Some("not pem")),
            Err(ProvenanceError::TrustAnchors(_))
        ));
    }
}
