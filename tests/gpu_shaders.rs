//! Every kernel the GPU backend compiles, translated to Metal Shading Language by naga —
//! what wgpu does on a Mac — so a kernel that Metal cannot take fails here, on any
//! machine, rather than on a user's Mac. The kernels are the ones a device really
//! compiled (`Gpu::compiled_kernels`): the forward passes of every architecture and
//! format, one sequence and several, experts resident and fetched, and each matrix
//! format in every lane layout. Skipped (with the reason printed) where the machine has
//! no GPU adapter, unless ODMOE_REQUIRE_GPU is set (CI installs lavapipe and sets it).

#![cfg(feature = "gpu")]

mod common;

use std::collections::BTreeSet;

use odmoe::compute::gpu::lane_layout::LaneLayout;
use odmoe::compute::gpu::matrix::GpuMatrix;
use odmoe::compute::gpu::{CompiledKernel, Gpu};
use odmoe::compute::QMatrix;
use odmoe::model::{GpuModel, GpuSequence, Logits, Model};
use odmoe::quant::GgmlType;

const TOKENS: [u32; 5] = [1, 17, 300, 42, 7];

/// Runs every kind of pass once on `gpu`, so that it compiles every kernel it has.
fn compile_everything(gpu: &Gpu) {
    for name in ["mixtral.f32", "qwen2moe.f32", "qwen3moe.f32", "olmoe.f32", "deepseek2.f32", "deepseek3.f32", "kimik2.f32", "mixtral_h256.Q8_0", "mixtral_h256.F16", "mixtral_h256.BF16", "mixtral_h256.Q4_0", "mixtral_h256.Q5_0", "mixtral_h256.Q2_K", "mixtral_h256.Q3_K_M", "mixtral_h256.Q5_K_M", "mixtral_h256.Q6_K", "qwen3moe_h256.Q4_K_M", "deepseek3_h256.Q8_0"] {
        let m = Model::open(common::fixture(&format!("models/{name}.gguf"))).unwrap();
        for budget in [None, Some(0)] {
            let g = match budget {
                None => GpuModel::new(&m, gpu).unwrap(),
                Some(b) => GpuModel::with_expert_budget(&m, gpu, b).unwrap(),
            };
            // a prompt, then a batch of three sequences (several rows per product)
            g.forward(&TOKENS, &mut g.new_cache(8), Logits::All).unwrap();
            let mut caches: Vec<_> = (0..3).map(|_| g.new_cache(8)).collect();
            let mut seqs: Vec<GpuSequence> = caches.iter_mut().map(|c| GpuSequence { tokens: &TOKENS, cache: c, logits: Logits::Last }).collect();
            g.forward_batch(&mut seqs).unwrap();
        }
        let mut f16 = m;
        f16.set_kv_type(odmoe::model::KvType::F16);
        let g = GpuModel::new(&f16, gpu).unwrap();
        g.forward(&TOKENS, &mut g.new_cache(8), Logits::All).unwrap();
    }
    // every lane layout of every matrix format (compiling is enough)
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        let (rows, cols) = (16, 256);
        let w = QMatrix::new(ty, rows, cols, vec![0u8; rows * ty.row_bytes(cols as u64).unwrap() as usize].into());
        let m = GpuMatrix::new(gpu, &w).unwrap();
        for lanes in [8, 16, 32, 64, 128] {
            for rows_per_lane in [1, 2, 4] {
                for subgroup_sums in [false, true] {
                    // layouts a format has no kernel for are refused, not compiled
                    let _ = m.with_layout(gpu, LaneLayout { lanes, rows_per_lane, subgroup_sums });
                }
            }
        }
    }
}

/// `k` in Metal Shading Language 2.4 (macOS 12 and later, every Apple Silicon Mac), with
/// the bounds checks wgpu asks for; the error says why not.
fn to_metal(k: &CompiledKernel) -> Result<String, String> {
    let module = naga::front::wgsl::parse_str(&k.source).map_err(|e| e.emit_to_string(&k.source))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all()).validate(&module).map_err(|e| format!("{e:?}"))?;
    let policy = naga::proc::BoundsCheckPolicy::Restrict;
    let options = naga::back::msl::Options {
        lang_version: (2, 4),
        bounds_check_policies: naga::proc::BoundsCheckPolicies { index: policy, buffer: policy, image_load: policy, binding_array: naga::proc::BoundsCheckPolicy::Unchecked },
        ..Default::default()
    };
    let pipeline = naga::back::msl::PipelineOptions { entry_point: Some((naga::ShaderStage::Compute, k.entry.clone())), ..Default::default() };
    naga::back::msl::write_string(&module, &info, &options, &pipeline).map(|(msl, _)| msl).map_err(|e| format!("{e:?}"))
}

#[test]
fn every_kernel_translates_to_metal() {
    let Some(gpu) = common::gpu_or_skip() else { return };
    compile_everything(&gpu);
    let kernels = gpu.compiled_kernels();
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for k in &kernels {
        if !seen.insert((k.source.clone(), k.entry.clone())) {
            continue;
        }
        match to_metal(k) {
            Ok(msl) => assert!(msl.contains("kernel void"), "{}: no kernel function in\n{msl}", k.name),
            Err(e) => failures.push(format!("{} ({}): {e}", k.name, k.entry)),
        }
    }
    assert!(failures.is_empty(), "{} of {} kernels do not translate to Metal:\n{}", failures.len(), seen.len(), failures.join("\n"));
    eprintln!("{} kernels ({} compilations) translate to Metal Shading Language 2.4", seen.len(), kernels.len());
    // every shader file in shaders/ is part of some kernel that was checked
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "wgsl") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        // a line of its code (not a comment, not a switch a variant rewrites)
        let line = text.lines().map(str::trim).find(|l| l.len() > 20 && !l.starts_with("//") && !l.starts_with("const")).unwrap();
        assert!(kernels.iter().any(|k| k.source.contains(line)), "{}: no kernel compiled from it was checked", p.display());
    }
    // the subgroup variants are checked where the device has subgroups
    if gpu.subgroup_size().is_some() {
        assert!(kernels.iter().any(|k| k.name.ends_with("_sg")), "no subgroup-sum kernel was compiled");
    } else {
        eprintln!("note: this device has no subgroup operations; the subgroup-sum kernels were not checked");
    }
}
