//! Between ndarray and ort: borrowing an array view as a session input, and ort errors as
//! [`EngineError::Run`].

use ndarray::Dimension;
use ort::value::TensorRef;

use crate::engine::EngineError;

pub(super) fn run_err(graph: &'static str) -> impl Fn(ort::Error) -> EngineError {
    move |e| EngineError::Run {
        graph,
        message: e.to_string(),
    }
}

pub(super) fn tensor_ref<'a, T, D>(
    graph: &'static str,
    view: ndarray::ArrayView<'a, T, D>,
) -> Result<ort::session::SessionInputValue<'a>, EngineError>
where
    T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
    D: Dimension + 'static,
{
    if !view.is_standard_layout() {
        return Err(EngineError::Shape {
            graph,
            problem: "input is not contiguous".into(),
        });
    }
    Ok(TensorRef::from_array_view(view)
        .map_err(run_err(graph))?
        .into())
}
