//! Checking each graph's interface against the manifest: names, dtypes and shapes of every input and
//! output, and the tuning graph's sizes against the adapter, tuning and latent settings.

use ort::session::Session;
use ort::value::TensorElementType;

use crate::engine::EngineError;
use crate::model::manifest::{DType, Dim, GraphSpec, Manifest, TUNING_GRAPH};

/// The tuning graph's declared interface against the rest of the manifest: the state vectors are
/// the adapter layout's length, the batch axis is `tuning.batch_size`, the batch tensors have the
/// latent and identity-token geometry. (`check_interface` has already tied the graph to the
/// declaration.)
pub(super) fn check_tuning_spec(manifest: &Manifest) -> Result<(), EngineError> {
    let spec = &manifest.graphs[TUNING_GRAPH];
    let n = (manifest.adapter.visual_length + manifest.adapter.token_length) as i64;
    let b = manifest.tuning.batch_size as i64;
    let (c, h) = (manifest.latent.channels as i64, manifest.latent.size as i64);
    let ids = manifest.tokenizer.max_length as i64;
    let tokens = manifest.num_id_tokens as i64;
    let d = manifest.hidden_size as i64;
    let expected: [(&str, Vec<i64>); 18] = [
        ("params", vec![n]),
        ("adam_m", vec![n]),
        ("adam_v", vec![n]),
        ("step", vec![]),
        ("lr_visual", vec![]),
        ("lr_token", vec![]),
        ("weight_decay", vec![]),
        ("input_ids", vec![b, ids]),
        ("latents", vec![b, c, h, h]),
        ("noise", vec![b, c, h, h]),
        ("timesteps", vec![b]),
        ("mask", vec![b, 1, h, h]),
        ("masked_latents", vec![b, c, h, h]),
        ("id_tokens", vec![b, tokens, d]),
        ("new_params", vec![n]),
        ("new_adam_m", vec![n]),
        ("new_adam_v", vec![n]),
        ("loss", vec![]),
    ];
    for (name, shape) in expected {
        let decl = spec
            .inputs
            .iter()
            .chain(&spec.outputs)
            .find(|t| t.name == name)
            .ok_or_else(|| EngineError::Interface {
                graph: TUNING_GRAPH.into(),
                field: format!("`{name}`"),
                problem: "is missing".into(),
            })?;
        let fixed: Vec<Dim> = shape.iter().map(|&x| Dim::Fixed(x)).collect();
        if decl.shape != fixed {
            return Err(EngineError::Interface {
                graph: TUNING_GRAPH.into(),
                field: format!("`{name}`"),
                problem: format!(
                    "declared shape {:?}, the manifest's adapter/tuning/latent sizes give {shape:?}",
                    decl.shape
                ),
            });
        }
    }
    Ok(())
}

fn dtype_name(ty: Option<TensorElementType>) -> String {
    match ty {
        Some(t) => format!("{t:?}").to_lowercase(),
        None => "not a tensor".into(),
    }
}

/// Compares a session's inputs and outputs with the manifest: names in order, dtypes, ranks and fixed
/// dimensions.
pub(super) fn check_interface(
    key: &str,
    session: &Session,
    spec: &GraphSpec,
) -> Result<(), EngineError> {
    let sides = [
        ("input", session.inputs(), &spec.inputs),
        ("output", session.outputs(), &spec.outputs),
    ];
    for (side, outlets, declared) in sides {
        let err = |field: String, problem: String| EngineError::Interface {
            graph: key.to_string(),
            field,
            problem,
        };
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        let want: Vec<&str> = declared.iter().map(|t| t.name.as_str()).collect();
        if names != want {
            return Err(err(
                format!("{side}s"),
                format!("graph has {names:?}, manifest declares {want:?}"),
            ));
        }
        for (outlet, decl) in outlets.iter().zip(declared) {
            let field = format!("{side} `{}`", decl.name);
            let ty = outlet.dtype().tensor_type();
            let expected = match decl.dtype {
                DType::Float32 => TensorElementType::Float32,
                DType::Int64 => TensorElementType::Int64,
                DType::Float16 => TensorElementType::Float16,
            };
            if ty != Some(expected) {
                return Err(err(
                    field,
                    format!(
                        "dtype is {}, manifest says {:?}",
                        dtype_name(ty),
                        decl.dtype
                    ),
                ));
            }
            let shape = outlet
                .dtype()
                .tensor_shape()
                .map(|s| s.to_vec())
                .unwrap_or_default();
            if shape.len() != decl.shape.len() {
                return Err(err(
                    field,
                    format!(
                        "rank is {}, manifest says {}",
                        shape.len(),
                        decl.shape.len()
                    ),
                ));
            }
            for (axis, (&got, want)) in shape.iter().zip(&decl.shape).enumerate() {
                if let Dim::Fixed(n) = want {
                    if got != *n {
                        return Err(err(
                            field.clone(),
                            format!("dimension {axis} is {got}, manifest says {n}"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
