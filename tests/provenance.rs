//! Provenance marking end to end: outputs marked with a throwaway CA's signer validate with that CA
//! as the trust anchor and carry the `c2pa.opened` + `c2pa.edited` actions, the IPTC digital source
//! type in both the manifest and the XMP, and no thumbnail; tampering with pixels breaks
//! validation; unsigned outputs keep the XMP; bad credentials are refused with a clear error; the
//! `verify` command reports all of it. One test measures what signing costs on the tiny model's
//! 910x1137 output (printed, not asserted).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::test_ca::{KeyType, TestCa};
use common::{repo, settings};
use img_parts::jpeg::{markers, Jpeg};
use img_parts::png::Png;
use img_parts::Bytes;
use pva_worker::pipeline::image::{encode, OutputFormat};
use pva_worker::provenance::{
    mark, verify, OutputProvenance, ProvenanceError, Report, Signer, DIGITAL_SOURCE_TYPE,
    EDIT_ACTION, PARENT_TITLE,
};

/// The example target photo (a JPEG of a real person, the worker's kind of input).
fn input_photo() -> Vec<u8> {
    std::fs::read(repo().join("examples/photos/obama.jpg")).unwrap()
}

/// The input photo shrunk (fast tests), encoded as an output of `format`.
fn output(format: OutputFormat) -> Vec<u8> {
    let img = image::load_from_memory(&input_photo()).unwrap().to_rgb8();
    let small = image::imageops::resize(&img, 182, 227, image::imageops::FilterType::Triangle);
    encode(&small, format).unwrap()
}

fn signer(ca: &TestCa) -> Signer {
    Signer::from_settings(&ca.settings(true))
        .unwrap()
        .expect("configured signer")
}

fn info(parent: &[u8]) -> OutputProvenance<'_> {
    OutputProvenance::new("pva-tiny", "0.1.0", Some(parent))
}

/// Everything an output of ours must say, checked on a report.
fn assert_marked(report: &Report, what: &str) {
    assert!(report.signed, "{what}: {report:#?}");
    assert!(report.valid, "{what}: {report:#?}");
    let actions: Vec<&str> = report.actions.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["c2pa.opened", EDIT_ACTION], "{what}");
    let edited = &report.actions[1];
    assert_eq!(
        edited.digital_source_type.as_deref(),
        Some(DIGITAL_SOURCE_TYPE),
        "{what}"
    );
    let agent = edited.software_agent.as_deref().unwrap_or_default();
    assert!(
        agent.starts_with("pva-worker ") && agent.contains("pva-tiny 0.1.0"),
        "{what}: agent {agent:?}"
    );
    assert_eq!(
        report.digital_source_type.as_deref(),
        Some(DIGITAL_SOURCE_TYPE)
    );
    assert_eq!(report.parents, [PARENT_TITLE], "{what}");
    assert_eq!(
        report.thumbnails, 0,
        "{what}: no thumbnail may embed a face"
    );
    assert_eq!(
        report.xmp_source_type.as_deref(),
        Some(DIGITAL_SOURCE_TYPE),
        "{what}: XMP"
    );
    assert!(
        report
            .claim_generator
            .as_deref()
            .is_some_and(|g| g.starts_with("pva-worker")),
        "{what}: {:?}",
        report.claim_generator
    );
}

#[test]
fn png_and_jpeg_outputs_validate_with_the_test_ca_as_trust_anchor() {
    let ca = TestCa::new(KeyType::P256);
    let signer = signer(&ca);
    let parent = input_photo();
    for format in [OutputFormat::Png, OutputFormat::Jpeg { quality: 90 }] {
        let plain = output(format);
        let marked = mark(&plain, format, &info(&parent), Some(&signer)).unwrap();
        let report = verify(&marked, Some(&ca.anchors())).unwrap();
        assert_marked(&report, &format!("{format:?}"));
        assert_eq!(report.state.as_deref(), Some("Trusted"));
        assert!(report.trust_checked);
        assert!(report.validation_errors.is_empty(), "{report:#?}");
        // The pixels are the ones the model produced.
        assert_eq!(
            image::load_from_memory(&plain).unwrap().to_rgb8(),
            image::load_from_memory(&marked).unwrap().to_rgb8(),
            "{format:?}"
        );
    }
}

#[test]
fn other_key_types_sign_too() {
    for key in [KeyType::Ed25519, KeyType::Rsa2048] {
        let ca = TestCa::new(key);
        let parent = input_photo();
        let marked = mark(
            &output(OutputFormat::Png),
            OutputFormat::Png,
            &info(&parent),
            Some(&signer(&ca)),
        )
        .unwrap();
        assert_marked(
            &verify(&marked, Some(&ca.anchors())).unwrap(),
            &format!("{key:?}"),
        );
    }
}

#[test]
fn trust_depends_on_the_anchors() {
    let ca = TestCa::new(KeyType::P256);
    let parent = input_photo();
    let marked = mark(
        &output(OutputFormat::Png),
        OutputFormat::Png,
        &info(&parent),
        Some(&signer(&ca)),
    )
    .unwrap();
    // No anchors: intact, but the signer is not vouched for.
    let report = verify(&marked, None).unwrap();
    assert!(report.valid && !report.trust_checked, "{report:#?}");
    assert_eq!(report.state.as_deref(), Some("Valid"));
    assert!(
        report
            .validation_errors
            .iter()
            .any(|e| e.starts_with("signingCredential.untrusted")),
        "{report:#?}"
    );
    // Another CA's root: not trusted, so not valid.
    let other = TestCa::new(KeyType::P256);
    let report = verify(&marked, Some(&other.anchors())).unwrap();
    assert!(!report.valid, "{report:#?}");
}

#[test]
fn tampering_with_png_pixels_breaks_validation() {
    let ca = TestCa::new(KeyType::P256);
    let parent = input_photo();
    let marked = mark(
        &output(OutputFormat::Png),
        OutputFormat::Png,
        &info(&parent),
        Some(&signer(&ca)),
    )
    .unwrap();
    // Change one pixel and splice the re-encoded image data into the marked file, keeping its
    // manifest and XMP chunks: a well-formed PNG whose pixels are not the signed ones.
    let mut img = image::load_from_memory(&marked).unwrap().to_rgb8();
    let p = img.get_pixel_mut(10, 10);
    p.0[0] = p.0[0].wrapping_add(40);
    let edited = Png::from_bytes(Bytes::from(encode(&img, OutputFormat::Png).unwrap())).unwrap();
    let mut png = Png::from_bytes(Bytes::from(marked)).unwrap();
    let first = png
        .chunks()
        .iter()
        .position(|c| c.kind() == *b"IDAT")
        .unwrap();
    png.chunks_mut().retain(|c| c.kind() != *b"IDAT");
    for (i, chunk) in edited.chunks_by_type(*b"IDAT").enumerate() {
        png.chunks_mut().insert(first + i, chunk.clone());
    }
    let tampered = png.encoder().bytes().to_vec();
    assert_eq!(
        image::load_from_memory(&tampered).unwrap().to_rgb8(),
        img,
        "the tampered file decodes to the edited pixels"
    );
    let report = verify(&tampered, Some(&ca.anchors())).unwrap();
    assert!(report.signed && !report.valid, "{report:#?}");
    assert!(
        report
            .validation_errors
            .iter()
            .any(|e| e.contains("dataHash.mismatch")),
        "{report:#?}"
    );
}

#[test]
fn tampering_with_jpeg_pixels_breaks_validation() {
    let ca = TestCa::new(KeyType::P256);
    let parent = input_photo();
    let format = OutputFormat::Jpeg { quality: 90 };
    let marked = mark(&output(format), format, &info(&parent), Some(&signer(&ca))).unwrap();
    // Flip a bit in the middle of the entropy-coded scan (never creating or breaking a 0xFF).
    let jpeg = Jpeg::from_bytes(Bytes::from(marked.clone())).unwrap();
    let header: usize = jpeg
        .segments()
        .iter()
        .take_while(|s| s.marker() != markers::SOS)
        .map(|s| s.len())
        .sum();
    let mut tampered = marked.clone();
    let mut at = 2 + header + (marked.len() - header) / 2;
    while tampered[at] >= 0xfe || tampered[at - 1] == 0xff {
        at += 1;
    }
    tampered[at] ^= 0x01;
    assert_ne!(
        image::load_from_memory(&tampered).unwrap().to_rgb8(),
        image::load_from_memory(&marked).unwrap().to_rgb8(),
        "the flipped bit changes pixels"
    );
    let report = verify(&tampered, Some(&ca.anchors())).unwrap();
    assert!(report.signed && !report.valid, "{report:#?}");
}

#[test]
fn unsigned_marking_still_carries_the_xmp() {
    let parent = input_photo();
    for format in [
        OutputFormat::Png,
        OutputFormat::Jpeg { quality: 85 },
        OutputFormat::Webp,
    ] {
        let marked = mark(&output(format), format, &info(&parent), None).unwrap();
        let report = verify(&marked, None).unwrap();
        assert!(!report.signed && !report.valid, "{format:?}: {report:#?}");
        assert_eq!(
            report.xmp_source_type.as_deref(),
            Some(DIGITAL_SOURCE_TYPE),
            "{format:?}"
        );
    }
}

#[test]
fn webp_outputs_carry_both_marks_and_still_decode() {
    let ca = TestCa::new(KeyType::P256);
    let parent = input_photo();
    let plain = output(OutputFormat::Webp);
    let marked = mark(
        &plain,
        OutputFormat::Webp,
        &info(&parent),
        Some(&signer(&ca)),
    )
    .unwrap();
    assert_marked(&verify(&marked, Some(&ca.anchors())).unwrap(), "WebP");
    assert_eq!(
        image::load_from_memory(&plain).unwrap().to_rgb8(),
        image::load_from_memory(&marked).unwrap().to_rgb8()
    );
}

#[test]
fn bad_credentials_are_refused_with_a_clear_error() {
    let ca = TestCa::new(KeyType::P256);
    let expect_invalid = |settings: pva_worker::provenance::ProvenanceSettings, needle: &str| {
        let err = Signer::from_settings(&settings).unwrap_err();
        assert!(
            matches!(err, ProvenanceError::InvalidCredentials { .. }),
            "{needle}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(needle), "expected {needle:?} in: {text}");
        // The message names the problem, never the key material.
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    };

    // A key file that is not a key.
    let garbage = ca.path("garbage.key");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut s = ca.settings(true);
    s.signing_key = garbage;
    expect_invalid(s, "private key");

    // A certificate file with no certificate in it.
    let not_cert = ca.path("not-a-cert.pem");
    std::fs::write(&not_cert, "hello").unwrap();
    let mut s = ca.settings(true);
    s.certificate_chain = not_cert;
    expect_invalid(s, "no PEM certificate");

    // A truncated certificate.
    let cert = std::fs::read_to_string(&ca.signer_cert).unwrap();
    let cut = ca.path("cut.pem");
    std::fs::write(
        &cut,
        format!("{}\n-----END CERTIFICATE-----\n", &cert[..cert.len() / 2]),
    )
    .unwrap();
    let mut s = ca.settings(true);
    s.certificate_chain = cut;
    // NOTE: the reason depends on where the cut lands in the random certificate (bad base64, or
    // valid base64 of truncated DER that c2pa calls an invalid certificate); either way it is refused.
    expect_invalid(s, "invalid provenance signing credentials");

    // A valid key that does not belong to the certificate.
    let other = TestCa::new(KeyType::P256);
    let mut s = ca.settings(true);
    s.signing_key = other.signer_key.clone();
    expect_invalid(s, "claimSignature.mismatch");

    // The algorithm does not match the key.
    let mut s = ca.settings(true);
    s.algorithm = pva_worker::provenance::SigningAlgorithm::Ed25519;
    expect_invalid(s, "private key");

    // A self-signed signing certificate (c2pa refuses these).
    let (self_cert, self_key) = ca.self_signed();
    let mut s = ca.settings(true);
    s.certificate_chain = self_cert;
    s.signing_key = self_key;
    expect_invalid(s, "certificate was self-signed");
}

/// Runs the `pva-worker verify` binary; returns (exit code, stdout).
fn verify_cli(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pva-worker"))
        .arg("verify")
        .args(args)
        .env("PVA__LOGGING__FORMAT", "pretty")
        .env_remove("PVA__LOGGING__LEVEL")
        .output()
        .unwrap();
    // At the default log level c2pa's INFO lines (its progress, with the crate's source paths) stay
    // out of the way of the report.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("c2pa"),
        "c2pa logs at the default level:\n{stderr}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_verify_command_reports_and_sets_the_exit_code() {
    let ca = TestCa::new(KeyType::P256);
    let dir = tempfile::tempdir().unwrap();
    let parent = input_photo();
    let signed = dir.path().join("signed.jpg");
    let format = OutputFormat::Jpeg { quality: 90 };
    std::fs::write(
        &signed,
        mark(&output(format), format, &info(&parent), Some(&signer(&ca))).unwrap(),
    )
    .unwrap();
    let unsigned = dir.path().join("unsigned.png");
    std::fs::write(
        &unsigned,
        mark(
            &output(OutputFormat::Png),
            OutputFormat::Png,
            &info(&parent),
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let anchors = ca.ca_cert.to_str().unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();

    let (code, text) = verify_cli(&[&path(&signed), "--trust-anchors", anchors]);
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("VALID (signed by a trusted certificate)"),
        "{text}"
    );
    assert!(
        text.contains(EDIT_ACTION) && text.contains(DIGITAL_SOURCE_TYPE),
        "{text}"
    );

    let (code, json) = verify_cli(&[&path(&signed), "--trust-anchors", anchors, "--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["actions"][1]["digital_source_type"], DIGITAL_SOURCE_TYPE);

    // The manifest store (the JPEG's APP11 segments), as text: no thumbnail assertion, nothing
    // about the person or the job.
    let jpeg = Jpeg::from_bytes(Bytes::from(std::fs::read(&signed).unwrap())).unwrap();
    let store: Vec<u8> = jpeg
        .segments_by_marker(markers::APP11)
        .flat_map(|s| s.contents().to_vec())
        .collect();
    let store = String::from_utf8_lossy(&store).to_lowercase();
    assert!(
        store.contains("c2pa.actions"),
        "the manifest store is in APP11"
    );
    for word in ["obama", "example", "consent", "beard", "thumbnail"] {
        assert!(!store.contains(word), "{word:?} in the manifest");
    }

    let (code, text) = verify_cli(&[&path(&unsigned)]);
    assert_ne!(code, 0, "an unsigned file is not valid: {text}");
    assert!(text.contains("NOT SIGNED"), "{text}");

    let other = TestCa::new(KeyType::P256);
    let (code, text) = verify_cli(&[
        &path(&signed),
        "--trust-anchors",
        other.ca_cert.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "signed by a CA outside the anchors: {text}");
    assert!(text.contains("INVALID"), "{text}");
}

/// What signing adds to one output of the tiny model (910x1137, PNG and JPEG): time and bytes,
/// against the CPU time of the whole job. Printed (`--nocapture`), never asserted.
#[test]
fn measure_what_signing_adds_to_a_tiny_model_output() {
    let out = tempfile::tempdir().unwrap();
    let mut job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("examples/job.json")).unwrap()).unwrap();
    job["num_outputs"] = 1.into();
    if job.get("consent").is_none() {
        job["consent"] = serde_json::json!({"id": "measure-provenance", "version": "1"});
    }
    let job_path = out.path().join("job.json");
    std::fs::write(&job_path, serde_json::to_vec(&job).unwrap()).unwrap();
    let mut s = settings();
    s.engine.intra_threads = 2;
    let t = Instant::now();
    let report = common::run_edit(
        &s,
        &pva_worker::commands::edit::EditOptions {
            job: job_path,
            root: Some(repo().join("examples")),
            out: out.path().to_path_buf(),
            contact_sheet: None,
        },
    );
    let result = &report.result;
    let wall_secs = t.elapsed().as_secs_f64();
    assert_eq!(
        result.status,
        pva_worker::job::JobStatus::Succeeded,
        "{result:?}"
    );
    // The job itself: every stage but loading the model (done once per worker).
    let job_secs: f64 = result.timings.values().sum();
    // Re-encode the pixels so the measurement starts from bare encoder output, whatever the
    // edit command already wrote around them.
    let img = image::open(&report.output_paths[0]).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (910, 1137));

    let ca = TestCa::new(KeyType::P256);
    let t = Instant::now();
    let signer = signer(&ca);
    let setup_ms = t.elapsed().as_secs_f64() * 1e3;
    let parent = input_photo();
    println!(
        "tiny model job ({} steps, 1 output, 910x1137): {job_secs:.3} s over its stages \
         ({wall_secs:.3} s wall with model loading); signer setup (once per worker, includes the \
         probe signature): {setup_ms:.1} ms",
        job["steps"]
    );
    for format in [OutputFormat::Png, OutputFormat::Jpeg { quality: 90 }] {
        let plain = encode(&img, format).unwrap();
        let xmp_only = mark(&plain, format, &info(&parent), None).unwrap();
        let runs = 5;
        let mut signed = Vec::new();
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            signed = mark(&plain, format, &info(&parent), Some(&signer)).unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        let median_ms = times[runs / 2];
        assert_marked(
            &verify(&signed, Some(&ca.anchors())).unwrap(),
            "measured output",
        );
        println!(
            "{format:?}: encoded {} B; XMP adds {} B; XMP + C2PA adds {} B; mark+sign median \
             {median_ms:.1} ms of {runs} (min {:.1}, max {:.1}) = {:.2}% of the job",
            plain.len(),
            xmp_only.len() - plain.len(),
            signed.len() - plain.len(),
            times[0],
            times[runs - 1],
            median_ms / 1e3 / job_secs * 100.0
        );
    }
}
