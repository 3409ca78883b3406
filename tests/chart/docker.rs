//! The Dockerfile: its stages, base images, user and paths match the chart, the embedded defaults
//! and `scripts/setup-ort.sh`, and every COPY source is in the .dockerignore build context.

use std::collections::BTreeMap;
use std::path::Path;

use pva_worker::config::DEFAULT_TOML;

use crate::common::repo;
use crate::helm::{default_values, flatten, read, str_of, toml_tables};

/// One Dockerfile instruction: the keyword (upper case) and its arguments, continuations joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.trim().split_once(char::is_whitespace).unwrap();
                out.push((keyword.to_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// Whether the .dockerignore allowlist (`*` then `!path` exceptions) lets `path` into the context.
fn in_build_context(dockerignore: &str, path: &str) -> bool {
    let rules: Vec<&str> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(rules.first(), Some(&"*"), ".dockerignore is an allowlist");
    let path = path.trim_end_matches('/');
    rules[1..].iter().any(|rule| {
        let allowed = rule.strip_prefix('!').expect("only exceptions after `*`");
        path == allowed || path.starts_with(&format!("{allowed}/"))
    })
}

#[derive(Debug, Default)]
struct DockerStage {
    name: String,
    image: String,
    instructions: Vec<(String, String)>,
}

#[test]
fn dockerfile_builds_the_cuda_worker_as_non_root_with_the_paths_the_chart_uses() {
    let dockerfile = read("Dockerfile");
    let dockerignore = read(".dockerignore");
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<DockerStage> = Vec::new();
    for (keyword, rest) in dockerfile_instructions(&dockerfile) {
        if keyword == "FROM" {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let mut image = parts[0].to_string();
            for (name, value) in &args {
                image = image.replace(&format!("${{{name}}}"), value.as_str());
            }
            assert!(!image.contains('$'), "unresolved base image {image}");
            assert_eq!(parts.len(), 3, "every stage is named: FROM {rest}");
            assert!(parts[1].eq_ignore_ascii_case("AS"));
            stages.push(DockerStage {
                name: parts[2].to_string(),
                image,
                ..Default::default()
            });
        } else if stages.is_empty() {
            assert_eq!(keyword, "ARG", "only ARG before the first FROM");
            let (name, value) = rest.split_once('=').expect("global ARGs have defaults");
            args.insert(name.to_string(), value.to_string());
        } else {
            stages
                .last_mut()
                .unwrap()
                .instructions
                .push((keyword, rest));
        }
    }
    let stage = |name: &str| {
        stages
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("stage {name}"))
    };
    let runs = |s: &DockerStage| -> String {
        s.instructions
            .iter()
            .filter(|(k, _)| k == "RUN")
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ort = stage("ort");
    let build = stage("build");
    let runtime = stages.last().unwrap();
    assert!(build.image.starts_with("rust:1.95"), "{}", build.image);
    assert!(
        runs(build).contains("cargo build --release --features cuda --locked"),
        "{}",
        runs(build)
    );
    assert!(runs(ort).contains("scripts/setup-ort.sh gpu"));
    assert!(
        runtime.image.starts_with("nvidia/cuda:13.")
            && runtime.image.contains("cudnn")
            && runtime.image.contains("runtime"),
        "runtime base {} is not a CUDA 13 + cuDNN runtime image",
        runtime.image
    );

    // Every COPY reads an earlier stage, or a path that exists and is in the build context.
    let mut copies = Vec::new();
    for (i, s) in stages.iter().enumerate() {
        for (keyword, rest) in &s.instructions {
            if keyword == "ADD" {
                panic!("{}: use COPY, not ADD", s.name);
            }
            if keyword != "COPY" {
                continue;
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            let from = words.iter().find_map(|w| w.strip_prefix("--from="));
            let paths: Vec<&str> = words
                .iter()
                .copied()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let (dest, sources) = paths.split_last().unwrap();
            match from {
                Some(from) => assert!(
                    stages[..i].iter().any(|earlier| earlier.name == from),
                    "{}: COPY --from={from} is not an earlier stage",
                    s.name
                ),
                None => {
                    for source in sources {
                        assert!(
                            repo().join(source).exists(),
                            "{}: COPY {source} does not exist",
                            s.name
                        );
                        assert!(
                            in_build_context(&dockerignore, source),
                            "{source} is excluded by .dockerignore"
                        );
                    }
                }
            }
            copies.push((
                s.name.clone(),
                from.map(String::from),
                sources.to_vec().join(" "),
                dest.to_string(),
            ));
        }
    }
    let copied_to = |from: &str| -> (String, String) {
        copies
            .iter()
            .find(|(stage, f, _, _)| *stage == runtime.name && f.as_deref() == Some(from))
            .map(|(_, _, src, dest)| (src.clone(), dest.clone()))
            .unwrap_or_else(|| panic!("the runtime stage copies nothing from {from}"))
    };

    // The runtime user is the chart's non-root user.
    let user = runtime
        .instructions
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .expect("USER")
        .1
        .clone();
    let (uid, gid) = user.split_once(':').unwrap_or((&user, &user));
    let values = default_values();
    let security = &values["podSecurityContext"];
    assert_eq!(
        uid.parse::<u64>().ok(),
        security["runAsUser"].as_u64(),
        "USER {user}"
    );
    assert_eq!(
        gid.parse::<u64>().ok(),
        security["runAsGroup"].as_u64(),
        "USER {user}"
    );
    assert_ne!(uid, "0");
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(values["securityContext"]["readOnlyRootFilesystem"], true);

    // ONNX Runtime lies where the chart's engine.ort_library points, and where the embedded default
    // (relative to the WORKDIR) points, so the bare image runs too.
    let setup_ort = read("scripts/setup-ort.sh");
    let version = setup_ort
        .lines()
        .find_map(|l| l.strip_prefix("version=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version in setup-ort.sh");
    let ort_workdir = ort
        .instructions
        .iter()
        .find(|(k, _)| k == "WORKDIR")
        .unwrap()
        .1
        .clone();
    let (ort_src, ort_dest) = copied_to("ort");
    assert_eq!(ort_src, format!("{ort_workdir}/.ort"));
    let chart_library = str_of(&values["image"]["ortLibrary"]);
    assert_eq!(
        chart_library,
        format!("{ort_dest}/onnxruntime/capi/libonnxruntime.so.{version}")
    );
    let workdir = runtime
        .instructions
        .iter()
        .rev()
        .find(|(k, _)| k == "WORKDIR")
        .unwrap()
        .1
        .clone();
    let defaults = flatten(&toml_tables(DEFAULT_TOML));
    let default_library = str_of(&defaults["engine.ort_library"]);
    assert_eq!(
        Path::new(&workdir).join(default_library),
        Path::new(chart_library)
    );

    // The entrypoint is the binary the build stage produced; the exposed port is the metrics port.
    let (_, binary) = copied_to("build");
    let entrypoint: Vec<String> = serde_json::from_str(
        &runtime
            .instructions
            .iter()
            .find(|(k, _)| k == "ENTRYPOINT")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(entrypoint, [binary]);
    let cmd: Vec<String> = serde_json::from_str(
        &runtime
            .instructions
            .iter()
            .find(|(k, _)| k == "CMD")
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(cmd, ["serve"]);
    let exposed = &runtime
        .instructions
        .iter()
        .find(|(k, _)| k == "EXPOSE")
        .unwrap()
        .1;
    assert_eq!(
        exposed.parse::<u64>().ok(),
        values["metrics"]["port"].as_u64()
    );
    let listen: std::net::SocketAddr = str_of(&defaults["metrics.listen"]).parse().unwrap();
    assert_eq!(exposed.parse::<u16>().ok(), Some(listen.port()));
}
