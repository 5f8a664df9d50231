//! What more than one of the zoo's test binaries checks.

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use medxfer_zoo::Backbone;

/// The train-mode logits, with the intermediates no backward rule reads freed during the
/// forward pass as training frees them (`release_unread`).
pub fn train_logits_freeing_unread(model: &Backbone, input: &Tensor) -> Tensor {
    let _release = candle_core::backprop::release_unread();
    model.features_and_logits(input, true).unwrap().1
}

/// `grads`, the gradients of `sum(logits * weights)` with the graph freed on the way
/// ([`train_logits_freeing_unread`], `backward_releasing`), against candle's own passes over
/// another forward pass, which keep the whole graph: every trainable parameter's gradient must
/// be the same bits, as none of the freed values is read.
pub fn assert_gradients_as_with_the_graph_kept(name: &str, model: &Backbone, input: &Tensor, weights: &Tensor, grads: &GradStore) {
    let (_, logits) = model.features_and_logits(input, true).unwrap();
    let kept = (&logits * weights).unwrap().sum_all().unwrap().backward().unwrap();
    let bits = |grads: &GradStore, var: &Tensor| {
        grads.get(var).map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>())
    };
    for (key, var) in model.params().trainable_vars() {
        assert_eq!(bits(grads, var.as_tensor()), bits(&kept, var.as_tensor()), "{name}: {key}'s gradient, freed on the way and kept");
    }
}
