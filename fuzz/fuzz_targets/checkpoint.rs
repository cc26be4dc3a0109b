//! Checkpoints: arbitrary bytes as the safetensors weights a model loads, and as a checkpoint's
//! record beside valid files.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mm_train::optim::{Group, Optimizer, OptimizerConfig};
use tch::{nn, Device};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("mm-fuzz-checkpoint-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let vs = nn::VarStore::new(Device::Cpu);
    let _layer = nn::linear(vs.root() / "l", 3, 2, Default::default());
    let weights = dir.join("w.safetensors");
    if std::fs::write(&weights, data).is_ok() {
        let _ = mm_encoders::weights::load_safetensors(&vs, &weights, &Default::default());
    }
    // The same bytes as a checkpoint record.
    let config = OptimizerConfig::Sgd { momentum: 0.0, nesterov: false, weight_decay: 0.0 };
    let Ok(mut opt) = Optimizer::new(&config, vec![Group::new("all", vs.trainable_variables())])
    else {
        return;
    };
    if std::fs::write(dir.join("last.json"), data).is_ok() {
        let _ = mm_train::checkpoint::load(&dir, "last", &vs, &mut opt);
    }
});
