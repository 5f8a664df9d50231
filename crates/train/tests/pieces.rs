#![allow(clippy::unwrap_used)]
//! The optimizer, the schedule, the search space and the metrics against PyTorch, scipy and
//! hand-computed cases (tests/fixtures/make_fixtures.py).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use medxfer_train::{
    EpochRecord, NesterovSgd, RunOutcome, Selection, SgdSettings, Shard, Trial, cosine, evaluate, halton_points, select_best, unit_point,
};

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reference.safetensors"), &Device::Cpu).unwrap()
}

/// The largest |a - b| over the entries; infinite where one is NaN, which candle's `max` would
/// pass over.
fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
    let values = (a - b).unwrap().flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    values.iter().fold(0.0, |m, v| if v.is_nan() { f64::INFINITY } else { m.max(v.abs()) })
}

#[test]
fn the_halton_points_are_scipys_and_the_protocols() {
    let scipy = reference()["halton.unit"].to_vec2::<f64>().unwrap();
    for (index, row) in scipy.iter().enumerate() {
        let (u1, u2) = unit_point(index);
        assert!((u1 - row[0]).abs() < 1e-12 && (u2 - row[1]).abs() < 1e-12, "point {index}");
    }
    // PROTOCOL.md's first four runs.
    let p = halton_points(75);
    assert_eq!(p.len(), 75);
    for (run, lr, wd) in [(0, 1e-4, 1e-6), (1, 3.162e-3, 4.642e-6), (2, 5.623e-4, 2.154e-5), (3, 1.778e-2, 1.668e-6)] {
        assert!((p[run].learning_rate / lr - 1.0).abs() < 1e-3 && (p[run].weight_decay / wd - 1.0).abs() < 1e-3, "run {run}: {:?}", p[run]);
    }
}

/// Four steps of torch's SGD fixture (f64) in `dtype`, each parameter within `tolerance` times
/// its magnitude (at least 1) of torch's values; returns the optimizer and its variables.
fn sgd_steps_as_torch(dtype: DType, tolerance: f64) -> (NesterovSgd, Var, Var) {
    let r: HashMap<String, Tensor> = reference().into_iter().map(|(k, v)| (k, v.to_dtype(dtype).unwrap())).collect();
    let weight = Var::from_tensor(&r["sgd.weight0"]).unwrap();
    let bias = Var::from_tensor(&r["sgd.bias0"]).unwrap();
    let settings = SgdSettings { learning_rate: 0.05, momentum: 0.9, weight_decay: 0.01, nesterov: true };
    let mut optimizer = NesterovSgd::new(vec![("weight".into(), weight.clone()), ("bias".into(), bias.clone())], settings);
    let (x, y, c) = (&r["sgd.x"], &r["sgd.y"], &r["sgd.c"]);
    let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    for step in 1..=4 {
        let prediction = x.matmul(&weight.as_tensor().t().unwrap()).unwrap().broadcast_add(bias.as_tensor()).unwrap();
        let loss = (prediction - y).unwrap().sqr().unwrap().broadcast_mul(c).unwrap().sum_all().unwrap();
        optimizer.step(&loss.backward().unwrap()).unwrap();
        for (name, var) in [("weight", &weight), ("bias", &bias)] {
            let expected = wide(&r[&format!("sgd.{name}{step}")]);
            let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1.0);
            assert!(max_difference(&wide(var.as_tensor()), &expected) < tolerance * scale, "{dtype:?}: {name} after step {step}");
        }
    }
    (optimizer, weight, bias)
}

/// In f32 the CPU takes the fused one-pass update (sgd.rs): the same steps within f32's
/// rounding of torch's f64 values.
#[test]
fn nesterov_sgd_steps_as_torch_in_f32() {
    let (optimizer, weight, _) = sgd_steps_as_torch(DType::F32, 1e-5);
    assert_eq!(optimizer.state()["weight"].dims(), weight.dims());
}

#[test]
fn nesterov_sgd_steps_as_torch() {
    let (optimizer, weight, bias) = sgd_steps_as_torch(DType::F64, 1e-12);
    let settings = optimizer.settings;
    // The momentum state round-trips into a fresh optimizer.
    let mut resumed = NesterovSgd::new(vec![("weight".into(), weight.clone()), ("bias".into(), bias.clone())], settings);
    resumed.restore(optimizer.state().clone()).unwrap();
    assert_eq!(resumed.state().len(), 2);
    let wrong = HashMap::from([("weight".to_string(), Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap())]);
    assert!(resumed.restore(wrong).unwrap_err().to_string().contains("shape"));
}

#[test]
fn cosine_annealing_matches_torch_per_epoch() {
    let torch = reference()["cosine.lrs"].to_vec1::<f64>().unwrap();
    for (epoch, expected) in torch.iter().enumerate() {
        assert!((cosine(0.1, epoch, 10) - expected).abs() < 1e-12, "epoch {epoch}");
    }
}

#[test]
fn balanced_accuracy_is_the_mean_recall() {
    // Class 0: 3 of 4 right; class 1: 1 of 2; class 2: absent from the truth (left out).
    let e = evaluate(&[0, 0, 0, 0, 1, 1], &[0, 0, 0, 1, 1, 2], 3);
    assert_eq!(e.confusion, vec![vec![3, 1, 0], vec![0, 1, 1], vec![0, 0, 0]]);
    assert_eq!(e.recall, vec![Some(0.75), Some(0.5), None]);
    assert!((e.balanced_accuracy - 0.625).abs() < 1e-15);
    assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-15);
}

#[test]
fn shards_split_the_trials_and_a_opt_breaks_ties_by_loss_then_index() {
    let shard = Shard::parse("1/3").unwrap();
    assert_eq!((0..9).filter(|&i| shard.takes(i)).collect::<Vec<_>>(), vec![1, 4, 7]);
    for bad in ["3/3", "1", "a/b", "0/0"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
    let trial = |index, bacc, loss| {
        let best = EpochRecord {
            epoch: 1,
            learning_rate: 0.1,
            train_loss: 0.0,
            val_loss: loss,
            val_balanced_accuracy: bacc,
            val_accuracy: 0.0,
            seconds: 0.0,
        };
        Trial {
            index,
            outcome: RunOutcome {
                learning_rate: 0.1,
                weight_decay: 0.0,
                selection: Selection::ValLoss,
                best_epoch: 1,
                best,
                epochs_run: 1,
                stopped_early: false,
                test: None,
                ood: None,
            },
        }
    };
    assert_eq!(select_best(&[trial(0, 0.8, 0.5), trial(1, 0.9, 0.7), trial(2, 0.85, 0.1)]).unwrap().index, 1);
    assert_eq!(select_best(&[trial(0, 0.9, 0.5), trial(1, 0.9, 0.4), trial(2, 0.9, 0.4)]).unwrap().index, 1);
    assert!(select_best(&[]).is_none());
}
