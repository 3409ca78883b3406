//! pva-worker: personalized face inpainting (Parallel Visual Attention) as a service.
//!
//! Layers, ground floor first; a module imports only its own floor or those below:
//! [`model`] (plain shared types) -> [`engine`] (ONNX Runtime) -> [`pipeline`] (the edit and the
//! tuning) -> [`provenance`] (marking outputs) -> [`job`] (wire types, failures, the store trait and
//! the one job runner) -> [`storage`], [`queue`], [`metrics`], [`telemetry`] (infrastructure) ->
//! [`config`] (every setting) -> [`service`] (model loading, inference threads, `serve`'s delivery
//! policy) -> [`commands`] (the subcommands).

pub mod commands;
pub mod config;
pub mod engine;
pub mod job;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod provenance;
pub mod queue;
pub mod service;
pub mod storage;
pub mod telemetry;

#[cfg(test)]
mod layering {
    //! The layers above, checked on the source: no module imports one on a higher floor, and each
    //! runtime crate is used only behind its one module. Test modules and comments are not checked.

    use std::path::{Path, PathBuf};

    /// Top-level module -> floor.
    const FLOORS: [(&str, u8); 12] = [
        ("model", 1),
        ("engine", 2),
        ("pipeline", 3),
        ("provenance", 4),
        ("job", 5),
        ("storage", 6),
        ("queue", 6),
        ("metrics", 6),
        ("telemetry", 6),
        ("config", 7),
        ("service", 8),
        ("commands", 9),
    ];

    /// Runtime crate -> the only source paths (prefixes under src/) that may use it.
    const RUNTIMES: [(&str, &[&str]); 10] = [
        ("ort", &["engine/"]),
        ("lapin", &["queue/"]),
        ("aws_sdk_s3", &["storage/s3.rs"]),
        ("axum", &["metrics/http.rs"]),
        ("c2pa", &["provenance/"]),
        ("schemars", &["job/wire.rs", "job/schema.rs"]),
        ("opentelemetry", &["telemetry/"]),
        ("opentelemetry_sdk", &["telemetry/"]),
        ("opentelemetry_otlp", &["telemetry/"]),
        ("tracing_opentelemetry", &["telemetry/"]),
    ];

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The code of a file: without its `#[cfg(test)]` module and without comment lines.
    fn code(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap();
        let text = match text.find("#[cfg(test)]\nmod ") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        text.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every `crate::name` in the code.
    fn crate_refs(code: &str) -> Vec<&str> {
        code.match_indices("crate::")
            .filter(|(i, _)| {
                let before = code[..*i].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
            .map(|(i, m)| {
                let rest = &code[i + m.len()..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect()
    }

    fn floor(module: &str) -> Option<u8> {
        FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
    }

    #[test]
    fn no_module_imports_a_higher_floor_and_runtime_crates_stay_behind_their_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut problems = Vec::new();
        for file in &files {
            let rel = file
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
            let code = code(file);
            if let Some(own) = floor(top) {
                for target in crate_refs(&code) {
                    if floor(target).is_some_and(|f| f > own) {
                        problems.push(format!("{rel} (floor {own}) uses crate::{target}"));
                    }
                }
            }
            for (runtime, allowed) in RUNTIMES {
                let path = format!("{runtime}::");
                let used = code.match_indices(&path).any(|(i, _)| {
                    !code[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if used && !allowed.iter().any(|a| rel.starts_with(a)) {
                    problems.push(format!("{rel} uses {path} outside {allowed:?}"));
                }
            }
        }
        assert!(files.len() > 40, "found {} source files", files.len());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn the_scanner_finds_what_it_must() {
        assert_eq!(
            crate_refs(concat!(
                "use crate",
                "::job::x;\nlet a = crate",
                "::model::Stage; my_crate",
                "::no"
            )),
            ["job", "model"]
        );
        assert_eq!(floor("service"), Some(8));
    }
}
