//! CPU-runnable checks of the GPU memory plan, the decode-floor byte count and the automatic device
//! choice: pure arithmetic and logic, no device needed.
use llama4_cuda::kv_cache::KvDType;
use llama4_cuda::model::device_choice::{choose_device, DeviceKind, Probe};
use llama4_cuda::model::gpu_plan::{decode_bytes, plan_gpu, plan_kv, GpuPlanRequest};
use llama4_cuda::model::plan::{linear_bytes, weight_bytes};
use llama4_cuda::model::quantize::QuantizeSpec;
use llama4_cuda::model::Config;
use llama4_cuda::Error;

const GIB: u64 = 1 << 30;
/// What an 80 GB H100 reports free with a context created: about 79 GiB.
const H100_FREE: u64 = 79 * GIB;

fn req(batch: usize, context: usize, free: u64, host: u64) -> GpuPlanRequest {
    GpuPlanRequest {
        batch,
        context,
        kv_dtype: KvDType::BF16,
        free_bytes: free,
        host_bytes: host,
    }
}

/// The numbers of an OutOfMemory error, or a panic naming what came instead.
fn oom(r: llama4_cuda::Result<impl std::fmt::Debug>) -> (String, usize, usize) {
    match r {
        Err(e @ Error::OutOfMemory { .. }) => {
            let msg = e.to_string();
            let Error::OutOfMemory { needed, free, .. } = e else {
                unreachable!()
            };
            (msg, needed, free)
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
}

#[test]
fn scout_int4_fits_one_h100_at_128k() {
    let c = Config::scout();
    let spec = QuantizeSpec::int4();
    let p = plan_gpu(&c, Some(&spec), req(1, 131_072, H100_FREE, 0)).unwrap();
    assert_eq!(p.weight_bytes, weight_bytes(&c, Some(&spec)));
    // LLAMA4.md rounds experts int4 (g128), rest bf16, to ~64.7 GB; this count gives 63.1 GB.
    assert!((62.5e9..65.5e9).contains(&(p.weight_bytes as f64)), "{p:?}");
    // 12 NoPE layers hold every token (4096 B per token and layer in bf16); 36 chunked layers at
    // most one 8192-token chunk.
    assert_eq!(p.kv_global_device_bytes, 12 * 4096 * 131_072);
    assert_eq!(p.kv_chunked_bytes, 36 * 4096 * 8192);
    assert_eq!((p.global_device_tokens, p.global_host_tokens), (131_072, 0));
    assert!(p.device_bytes() <= H100_FREE);
    assert_eq!(p.kv_device_budget(&c, true), 4096 * 131_072usize);
}

#[test]
fn scout_bf16_does_not_fit_and_the_error_gives_the_numbers() {
    let c = Config::scout();
    let (msg, needed, free) = oom(plan_gpu(&c, None, req(1, 1024, H100_FREE, 0)));
    assert_eq!(free as u64, H100_FREE);
    assert!(needed as u64 > weight_bytes(&c, None), "{msg}");
    assert!(
        msg.contains(&needed.to_string()) && msg.contains(&free.to_string()),
        "{msg}"
    );
    assert!(msg.contains("memory plan"), "{msg}");
}

#[test]
fn maverick_needs_several_gpus_but_one_layer_pair_fits() {
    let mut c = Config::maverick();
    let (_, needed, _) = oom(plan_gpu(
        &c,
        Some(&QuantizeSpec::int4()),
        req(1, 1024, H100_FREE, 0),
    ));
    assert!(needed as f64 > 200e9, "{needed}");
    c.num_hidden_layers = 2;
    c.layers.truncate(2);
    assert!(!c.layers[0].moe && c.layers[1].moe);
    for spec in [Some(QuantizeSpec::int4()), Some(QuantizeSpec::fp8()), None] {
        let p = plan_gpu(&c, spec.as_ref(), req(64, 131_072, H100_FREE, 0)).unwrap();
        assert!(p.device_bytes() <= H100_FREE, "{p:?}");
    }
}

#[test]
fn a_million_tokens_spill_to_the_host_tier_or_fail_with_numbers() {
    let c = Config::scout();
    let spec = QuantizeSpec::int4();
    let ctx = 1 << 20;
    // 12 x 4096 B x 1M = 48 GiB of global KV beside ~65 GB of weights: too much for 79 GiB.
    let (msg, needed, free) = oom(plan_gpu(&c, Some(&spec), req(1, ctx, H100_FREE, 0)));
    assert!(msg.contains("host tier"), "{msg}");
    assert!(needed > free, "{msg}");
    let p = plan_gpu(&c, Some(&spec), req(1, ctx, H100_FREE, 64 * GIB)).unwrap();
    assert_eq!(p.global_device_tokens + p.global_host_tokens, ctx);
    assert!(
        p.global_host_tokens > 0 && p.global_device_tokens > 0,
        "{p:?}"
    );
    assert_eq!(p.global_device_tokens % p.page_tokens, 0);
    assert!(p.device_bytes() <= H100_FREE);
    // Everything that fits on the device is used: one more page per layer would not fit.
    let page = 12 * 4096 * p.page_tokens as u64;
    assert!(p.device_bytes() + page > H100_FREE, "{p:?}");
    // fp8 halves the KV: the host tier shrinks.
    let q = plan_gpu(
        &c,
        Some(&spec),
        GpuPlanRequest {
            kv_dtype: KvDType::Fp8E4M3,
            ..req(1, ctx, H100_FREE, 64 * GIB)
        },
    )
    .unwrap();
    assert!(q.kv_global_host_bytes < p.kv_global_host_bytes);
}

#[test]
fn kv_only_plan_and_bad_requests() {
    let c = Config::scout();
    // With the weights resident, 10 GiB free holds batch 8 at 8K (36 + 12 layers x 8 x 8192 x 4 KiB
    // = 12 GiB would not; 4K is 6 GiB).
    let p = plan_kv(&c, req(8, 4096, 10 * GIB, 0)).unwrap();
    assert_eq!(p.weight_bytes, 0);
    assert_eq!(
        p.kv_chunked_bytes + p.kv_global_device_bytes,
        48 * 8 * 4096 * 4096
    );
    oom(plan_kv(&c, req(8, 8192, 10 * GIB, 0)));
    let f32_kv = GpuPlanRequest {
        kv_dtype: KvDType::F32,
        ..req(1, 1, H100_FREE, 0)
    };
    assert!(matches!(
        plan_kv(&c, f32_kv),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        plan_kv(&c, req(0, 1, H100_FREE, 0)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        plan_kv(&c, req(1, c.max_position_embeddings + 1, H100_FREE, 0)),
        Err(Error::ContextTooLong { .. })
    ));
}

#[test]
fn decode_bytes_count_what_a_step_reads() {
    let c = Config::scout();
    let spec = QuantizeSpec::int4();
    let (h, i) = (5120u64, 8192u64);
    let expert =
        2 * linear_bytes(i, h, Some(&spec.format)) + linear_bytes(h, i, Some(&spec.format));
    let b1 = decode_bytes(&c, Some(&spec), 1, 1024, KvDType::BF16);
    // Batch 1, top-1: one routed expert per MoE layer.
    assert_eq!(b1.routed_weights, 48 * expert);
    // Attention bf16 (q, k, v, o), shared expert int4, lm_head bf16, router, norms, one embedding row.
    let attn = 48 * 2 * (2 * 5120 * 5120 + 2 * 1024 * 5120);
    let lm_head = 2 * 202_048 * 5120;
    assert!(b1.fixed_weights > attn + lm_head + 48 * expert);
    assert!(b1.fixed_weights < attn + lm_head + 48 * expert + 100_000_000);
    // KV at 1024 tokens: every layer holds all of them (one chunk).
    assert_eq!(b1.kv, 48 * 4096 * 1024);
    // Batch 64: nearly every one of the 16 experts is touched (16 (1 - (15/16)^64) = 15.74).
    let b64 = decode_bytes(&c, Some(&spec), 64, 1024, KvDType::BF16);
    let touched = b64.routed_weights as f64 / (48 * expert) as f64;
    assert!((15.73..15.75).contains(&touched), "{touched}");
    // At 128K + 1 the chunked layers are one token into a chunk; the global ones read everything.
    let long = decode_bytes(&c, Some(&spec), 1, 131_073, KvDType::Fp8E4M3);
    assert_eq!(long.kv, 2048 * (12 * 131_073 + 36));
    assert!((long.floor_secs(3.0e12) - long.total() as f64 / 3.0e12).abs() < 1e-12);
}

#[test]
fn device_choice_covers_every_probe() {
    let gpu = Probe {
        driver: true,
        devices: 1,
        kernels: true,
    };
    let no_driver = Probe {
        driver: false,
        devices: 0,
        kernels: true,
    };
    let no_device = Probe { devices: 0, ..gpu };
    let no_kernels = Probe {
        kernels: false,
        ..gpu
    };
    // Automatic: CUDA only when everything is there, and the line says why not otherwise.
    assert_eq!(choose_device(None, &gpu).unwrap().kind, DeviceKind::Cuda);
    for (p, why) in [
        (no_driver, "libcuda"),
        (no_device, "no CUDA device"),
        (no_kernels, "kernels"),
    ] {
        let c = choose_device(None, &p).unwrap();
        assert_eq!(c.kind, DeviceKind::Cpu);
        assert!(
            c.info.starts_with("device: cpu (auto:") && c.info.contains(why),
            "{c:?}"
        );
    }
    // Explicit requests: cpu always; cuda only when it can run, else the typed reason.
    for p in [gpu, no_driver, no_device, no_kernels] {
        let c = choose_device(Some(DeviceKind::Cpu), &p).unwrap();
        assert_eq!(c.kind, DeviceKind::Cpu);
    }
    assert_eq!(
        choose_device(Some(DeviceKind::Cuda), &gpu).unwrap().kind,
        DeviceKind::Cuda
    );
    assert!(matches!(
        choose_device(Some(DeviceKind::Cuda), &no_driver),
        Err(Error::NoDevice(_))
    ));
    assert!(matches!(
        choose_device(Some(DeviceKind::Cuda), &no_device),
        Err(Error::NoDevice(_))
    ));
    assert!(matches!(
        choose_device(Some(DeviceKind::Cuda), &no_kernels),
        Err(Error::KernelsNotBuilt(_))
    ));
    // This machine: the probe never panics, and agrees with itself.
    let here = Probe::detect();
    assert_eq!(
        choose_device(None, &here).unwrap().kind == DeviceKind::Cuda,
        here.missing().is_none()
    );
}

#[test]
fn chunk_pieces_cover_every_token_and_never_cross_a_chunk() {
    use llama4_cuda::model::cuda::chunk_pieces;
    for start in [0usize, 1, 7, 8, 15, 16, 8191, 8192] {
        for len in [1usize, 2, 8, 9, 17, 100, 20_000] {
            for (piece, chunk) in [
                (usize::MAX, 8),
                (3, 8),
                (8192, 8192),
                (6, 16),
                (5, usize::MAX),
            ] {
                let p: Vec<(usize, usize)> = chunk_pieces(start, len, piece, chunk).collect();
                let mut next = 0;
                for &(r, n) in &p {
                    assert_eq!(r, next, "{start} {len} {piece} {chunk}: gap");
                    assert!(n >= 1 && n <= piece, "{p:?}");
                    let (a, b) = (start + r, start + r + n - 1);
                    assert_eq!(a / chunk, b / chunk, "{start} {len} {piece} {chunk}: {p:?}");
                    next = r + n;
                }
                assert_eq!(next, len);
                // As few pieces as the two limits allow: only the last piece of a chunk or one
                // of max_piece tokens ends early.
                for &(r, n) in &p[..p.len() - 1] {
                    assert!(n == piece || (start + r + n) % chunk == 0, "{p:?}");
                }
            }
        }
    }
}
