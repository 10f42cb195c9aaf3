//! GPU matrix kernels on the fixtures' own weights: every matrix of the quantized
//! fixtures in a format the GPU backend covers (F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q5_K,
//! Q6_K; experts as one stacked
//! matrix) gives the CPU backend's products within 1e-5 × max(1, max |y|), for two
//! activation rows. Skipped without a GPU adapter unless ODMOE_REQUIRE_GPU is set.

#![cfg(feature = "gpu")]

mod common;

use odmoe::compute::gpu::matrix::GpuMatrix;
use odmoe::compute::gpu::recorder::Recorder;
use odmoe::compute::gpu::Gpu;
use odmoe::compute::{cpu, QMatrix};
use odmoe::gguf::GgufModel;
use odmoe::quant::GgmlType;

#[test]
fn gpu_products_of_fixture_matrices_match_the_cpu_backend() {
    let Some(gpu) = Gpu::open().unwrap() else {
        let why = "no GPU adapter (on Linux, mesa-vulkan-drivers provides lavapipe)";
        assert!(std::env::var_os("ODMOE_REQUIRE_GPU").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return;
    };
    let mut checked = [0usize; 8];
    for name in ["mixtral_h256.Q8_0", "mixtral_h256.Q4_K_M", "mixtral_h256.Q5_K_M", "mixtral_h256.Q6_K", "qwen3moe_h256.Q4_K_M", "mixtral_h256.F16", "mixtral_h256.BF16", "mixtral_h256.Q4_0", "mixtral_h256.Q5_0"] {
        let g = GgufModel::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
        let infos: Vec<_> = g.tensors().filter(|t| t.dims.len() >= 2).cloned().collect();
        for info in infos {
            let slot = match info.ggml_type {
                GgmlType::Q8_0 => 0,
                GgmlType::Q4_K => 1,
                GgmlType::Q6_K => 2,
                GgmlType::Q5_K => 3,
                GgmlType::F16 => 4,
                GgmlType::BF16 => 5,
                GgmlType::Q4_0 => 6,
                GgmlType::Q5_0 => 7,
                _ => continue,
            };
            let (_, data) = g.tensor_bytes(&info.name).unwrap();
            let rows = info.dims[1..].iter().product::<u64>() as usize;
            let w = QMatrix::new(info.ggml_type, rows, info.dims[0] as usize, data);
            let x: Vec<f32> = (0..w.cols * 2).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let want = cpu::matmul(&w, &x);
            let m = GpuMatrix::new(&gpu, &w).unwrap();
            let (xb, y) = (gpu.upload("x", &x).unwrap(), gpu.output("y", 2 * rows));
            let mut enc = Recorder::new(&gpu);
            m.record(&mut enc, &xb, &y, 2).unwrap();
            enc.submit();
            let got = gpu.read_f32(&y, 2 * rows).unwrap();
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-5 * scale, "{name} {} ({}): largest difference {worst} (products up to {scale})", info.name, info.ggml_type);
            checked[slot] += 1;
        }
    }
    assert!(checked.iter().all(|&c| c > 0), "matrices checked per format (Q8_0, Q4_K, Q6_K, Q5_K, F16, BF16, Q4_0, Q5_0): {checked:?}");
}
