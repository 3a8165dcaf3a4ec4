//! Dispatch for the quantized GEMMs: which kernel path, tile and split-K a shape gets on a device.
//! Pure host logic (unit-tested on the CPU); [`super::gemm`] turns a plan into a launch.

use std::fmt;

use crate::error::{Error, Result};
use crate::quant::repack::Act16;

/// Largest M the decode (tensor-core GEMV) path takes by default; above it, prefill tiles win.
pub const DECODE_MAX_M: usize = 32;
/// Warps (16-row tiles of W) per decode block.
pub const DECODE_WARPS: usize = 4;
/// k per decode slab (the repacked int4 slab, and the fp8 decode step).
pub const SLAB_K: usize = 64;
/// Slabs of X a decode block stages at a time; a split gets at least this many.
pub const DECODE_MIN_SLABS_PER_SPLIT: usize = 8;
/// Prefill block tile: output columns (rows of W) x tokens.
pub const PREFILL_TILE: (usize, usize) = (128, 128);
/// Resident decode blocks wanted per SM (4 warps each): enough 16-byte loads in flight to cover
/// DRAM latency (about 4 slabs x 512 bytes per warp).
const DECODE_BLOCKS_PER_SM: usize = 4;

/// The quantized GEMM families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKind {
    /// int4 group-wise weights, 16-bit activations.
    W4A16 { act: Act16, group_size: usize },
    /// fp8 e4m3 weights, bf16 activations.
    Fp8W8A16,
    /// fp8 e4m3 weights, activations quantized per token to e4m3.
    Fp8W8A8,
    /// bf16 weights and activations (kernels/moe_grouped_gemm.cu, the one-group case).
    Bf16,
}

/// The kernel path of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// Tensor-core GEMV: `8 * token_tiles` tokens per block (more through grid.z), K split in
    /// `split_k` parts reduced by a second kernel when > 1.
    Decode { token_tiles: u32, split_k: u32 },
    /// 128 x 128 tiles, mma.sync body (sm_80 and any GPU other than sm_90).
    PrefillMma,
    /// 128 x 128 tiles, wgmma body (sm_90a cubin, chosen by the driver on compute capability 9.0).
    PrefillWgmma,
}

/// A dispatch decision, printable for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub kind: GemmKind,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Compute capability (major, minor) the plan was made for.
    pub cc: (u32, u32),
    pub path: GemmPath,
}

/// What the planner needs to know about the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub cc: (u32, u32),
    pub sm_count: u32,
}

impl DeviceInfo {
    /// H100 SXM: compute capability 9.0, 132 SMs.
    pub const H100: DeviceInfo = DeviceInfo {
        cc: (9, 0),
        sm_count: 132,
    };
    /// A100: compute capability 8.0, 108 SMs.
    pub const A100: DeviceInfo = DeviceInfo {
        cc: (8, 0),
        sm_count: 108,
    };
}

impl GemmPlan {
    /// Chooses the path for `Y[m, n] = X[m, k] · Wᵀ` of `kind` on `dev`.
    pub fn new(kind: GemmKind, m: usize, n: usize, k: usize, dev: DeviceInfo) -> Result<Self> {
        const OP: &str = "gemm plan";
        if n == 0 || k == 0 {
            return Err(Error::shape(OP, format!("weight [{n}, {k}] is empty")));
        }
        if dev.cc.0 < 8 {
            return Err(Error::invalid(
                OP,
                format!(
                    "compute capability {}.{}: the GEMM kernels need sm_80 or newer",
                    dev.cc.0, dev.cc.1
                ),
            ));
        }
        if matches!(kind, GemmKind::Bf16) && k % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!("bf16 GEMM needs k % 16 == 0 (whole 32-byte row pieces), k = {k}"),
            ));
        }
        if matches!(kind, GemmKind::Fp8W8A16 | GemmKind::Fp8W8A8) && k % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!("fp8 GEMM needs k % 16 == 0 (whole 16-byte row pieces), k = {k}"),
            ));
        }
        if let GemmKind::W4A16 { group_size, .. } = kind {
            if !matches!(group_size, 32 | 64 | 128) {
                return Err(Error::invalid(
                    OP,
                    format!("int4 group size {group_size}: the kernels take 32, 64 or 128"),
                ));
            }
        }
        let decode = match kind {
            // The prefill tile loads 16-byte pieces of X rows: k % 8 == 0 (always true for Llama 4).
            GemmKind::W4A16 { .. } => m <= DECODE_MAX_M || k % 8 != 0,
            // bf16 x fp8 has no wgmma form; W8A16 is the decode format (large m should use W8A8).
            GemmKind::Fp8W8A16 => true,
            GemmKind::Fp8W8A8 | GemmKind::Bf16 => m <= DECODE_MAX_M,
        };
        let path = if decode {
            let token_tiles: u32 = match m {
                0..=8 => 1,
                9..=16 => 2,
                _ => 4,
            };
            let blocks =
                n.div_ceil(16).div_ceil(DECODE_WARPS) * m.max(1).div_ceil(8 * token_tiles as usize);
            let slabs = k.div_ceil(SLAB_K);
            let want = (DECODE_BLOCKS_PER_SM * dev.sm_count as usize).div_ceil(blocks);
            let max_split = (slabs / DECODE_MIN_SLABS_PER_SPLIT).max(1);
            let split_k = want.clamp(1, max_split.min(64)) as u32;
            GemmPath::Decode {
                token_tiles,
                split_k,
            }
        } else if dev.cc == (9, 0) {
            GemmPath::PrefillWgmma
        } else {
            GemmPath::PrefillMma
        };
        let plan = GemmPlan {
            kind,
            m,
            n,
            k,
            cc: dev.cc,
            path,
        };
        // CUDA caps grid.y and grid.z at 65535 and the kernels do not loop over rows beyond the
        // grid: decode puts 8 * token_tiles tokens per grid.z, prefill 128 tokens per grid.y (the C
        // launchers of the int4 / fp8 GEMMs would otherwise fail the launch with a generic error).
        let (_, gy, gz) = plan.grid_wide();
        if gy > 65535 || gz > 65535 {
            return Err(Error::invalid(
                OP,
                format!("m = {m} rows need a grid of {gy} x {gz} blocks in y x z; CUDA allows 65535: split the call"),
            ));
        }
        Ok(plan)
    }

    /// [`Self::grid`] without the u32 casts (for the limit check).
    fn grid_wide(&self) -> (usize, usize, usize) {
        match self.path {
            GemmPath::Decode {
                token_tiles,
                split_k,
            } => (
                self.n.div_ceil(16).div_ceil(DECODE_WARPS),
                split_k as usize,
                self.m.max(1).div_ceil(8 * token_tiles as usize),
            ),
            GemmPath::PrefillMma | GemmPath::PrefillWgmma => (
                self.n.div_ceil(PREFILL_TILE.0),
                self.m.div_ceil(PREFILL_TILE.1),
                1,
            ),
        }
    }

    /// The main kernel's grid (x, y, z).
    pub fn grid(&self) -> (u32, u32, u32) {
        let (x, y, z) = self.grid_wide();
        (x as u32, y as u32, z as u32)
    }

    /// f32 elements of split-K workspace the launch needs (0 without split-K).
    pub fn workspace_len(&self) -> usize {
        match self.path {
            GemmPath::Decode { split_k, .. } if split_k > 1 => split_k as usize * self.m * self.n,
            _ => 0,
        }
    }

    /// The C ABI's path code (`L4C_GEMM_PATH_*`).
    pub fn path_code(&self) -> i32 {
        match self.path {
            GemmPath::Decode { .. } => 1,
            GemmPath::PrefillMma | GemmPath::PrefillWgmma => 2,
        }
    }
}

impl fmt::Display for GemmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GemmKind::W4A16 {
                act: Act16::BF16,
                group_size,
            } => write!(f, "w4a16-bf16-g{group_size}"),
            GemmKind::W4A16 {
                act: Act16::F16,
                group_size,
            } => write!(f, "w4a16-f16-g{group_size}"),
            GemmKind::Fp8W8A16 => f.write_str("fp8-w8a16"),
            GemmKind::Fp8W8A8 => f.write_str("fp8-w8a8"),
            GemmKind::Bf16 => f.write_str("bf16"),
        }
    }
}

impl fmt::Display for GemmPlan {
    /// e.g. `w4a16-bf16-g128 m=1 n=5120 k=5120 sm_90: decode tokens=8 split_k=7 grid=80x7x1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (gx, gy, gz) = self.grid();
        write!(
            f,
            "{} m={} n={} k={} sm_{}{}: ",
            self.kind, self.m, self.n, self.k, self.cc.0, self.cc.1
        )?;
        match self.path {
            GemmPath::Decode {
                token_tiles,
                split_k,
            } => write!(f, "decode tokens={} split_k={split_k}", 8 * token_tiles)?,
            GemmPath::PrefillMma => write!(f, "prefill mma.sync 128x128x64")?,
            GemmPath::PrefillWgmma => write!(f, "prefill wgmma 128x128x64")?,
        }
        if matches!(self.kind, GemmKind::Fp8W8A8) && matches!(self.path, GemmPath::Decode { .. }) {
            f.write_str(" (quantize+decode)")?;
        }
        write!(f, " grid={gx}x{gy}x{gz}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BF16_G128: GemmKind = GemmKind::W4A16 {
        act: Act16::BF16,
        group_size: 128,
    };
    /// Llama 4 projections: (n, k).
    const SHAPES: [(usize, usize); 7] = [
        (1024, 5120),
        (5120, 5120),
        (8192, 5120),
        (16384, 5120),
        (202048, 5120),
        (5120, 8192),
        (5120, 16384),
    ];
    const MS: [usize; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 512, 2048, 8192];

    #[test]
    fn shape_grid_paths() {
        for dev in [DeviceInfo::H100, DeviceInfo::A100] {
            for kind in [BF16_G128, GemmKind::Fp8W8A8, GemmKind::Fp8W8A16] {
                for &(n, k) in &SHAPES {
                    for &m in &MS {
                        let p = GemmPlan::new(kind, m, n, k, dev).unwrap();
                        let decode = m <= DECODE_MAX_M || kind == GemmKind::Fp8W8A16;
                        match p.path {
                            GemmPath::Decode {
                                token_tiles,
                                split_k,
                            } => {
                                assert!(decode, "{p}");
                                assert!(8 * token_tiles as usize >= m.min(32), "{p}");
                                let slabs_per_split = k.div_ceil(64).div_ceil(split_k as usize);
                                assert!(slabs_per_split >= DECODE_MIN_SLABS_PER_SPLIT, "{p}");
                                let (gx, gy, gz) = p.grid();
                                // Fills the GPU unless K cannot be split further.
                                let blocks = (gx * gy * gz) as usize;
                                assert!(
                                    blocks >= 2 * dev.sm_count as usize
                                        || k.div_ceil(64) / (split_k as usize)
                                            < 2 * DECODE_MIN_SLABS_PER_SPLIT,
                                    "{p}"
                                );
                                assert_eq!(
                                    p.workspace_len(),
                                    if split_k > 1 {
                                        split_k as usize * m * n
                                    } else {
                                        0
                                    }
                                );
                            }
                            GemmPath::PrefillWgmma => assert!(!decode && dev.cc == (9, 0), "{p}"),
                            GemmPath::PrefillMma => assert!(!decode && dev.cc == (8, 0), "{p}"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn display_names_the_choice() {
        let p = GemmPlan::new(BF16_G128, 1, 5120, 5120, DeviceInfo::H100).unwrap();
        assert_eq!(
            p.to_string(),
            "w4a16-bf16-g128 m=1 n=5120 k=5120 sm_90: decode tokens=8 split_k=7 grid=80x7x1"
        );
        let p = GemmPlan::new(BF16_G128, 2048, 8192, 5120, DeviceInfo::H100).unwrap();
        assert_eq!(
            p.to_string(),
            "w4a16-bf16-g128 m=2048 n=8192 k=5120 sm_90: prefill wgmma 128x128x64 grid=64x16x1"
        );
        let p = GemmPlan::new(GemmKind::Fp8W8A8, 512, 5120, 16384, DeviceInfo::A100).unwrap();
        assert_eq!(
            p.to_string(),
            "fp8-w8a8 m=512 n=5120 k=16384 sm_80: prefill mma.sync 128x128x64 grid=40x4x1"
        );
        let p = GemmPlan::new(GemmKind::Fp8W8A8, 4, 202048, 5120, DeviceInfo::H100).unwrap();
        assert_eq!(p.to_string(), "fp8-w8a8 m=4 n=202048 k=5120 sm_90: decode tokens=8 split_k=1 (quantize+decode) grid=3157x1x1");
    }

    #[test]
    fn bf16_plans() {
        let p = GemmPlan::new(GemmKind::Bf16, 1, 5120, 5120, DeviceInfo::H100).unwrap();
        assert_eq!(
            p.to_string(),
            "bf16 m=1 n=5120 k=5120 sm_90: decode tokens=8 split_k=7 grid=80x7x1"
        );
        let p = GemmPlan::new(GemmKind::Bf16, 33, 128, 5120, DeviceInfo::A100).unwrap();
        assert_eq!(
            p.to_string(),
            "bf16 m=33 n=128 k=5120 sm_80: prefill mma.sync 128x128x64 grid=1x1x1"
        );
        let p = GemmPlan::new(GemmKind::Bf16, 4096, 202048, 5120, DeviceInfo::H100).unwrap();
        assert_eq!(p.path, GemmPath::PrefillWgmma);
        // k must be a multiple of 16 (32-byte pieces of W rows).
        assert!(matches!(
            GemmPlan::new(GemmKind::Bf16, 4, 64, 40, DeviceInfo::H100),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn odd_shapes_and_errors() {
        // k not a multiple of 8 forces the decode path for int4 at any m.
        let p = GemmPlan::new(BF16_G128, 300, 100, 384 + 3, DeviceInfo::H100).unwrap();
        assert!(
            matches!(p.path, GemmPath::Decode { token_tiles: 4, .. }),
            "{p}"
        );
        assert_eq!(p.grid().2, 10);
        // m = 0 plans (the launch is a no-op).
        assert!(GemmPlan::new(BF16_G128, 0, 64, 64, DeviceInfo::A100).is_ok());
        assert!(matches!(
            GemmPlan::new(GemmKind::Fp8W8A8, 4, 64, 40, DeviceInfo::H100),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            GemmPlan::new(BF16_G128, 4, 0, 64, DeviceInfo::H100),
            Err(Error::Shape { .. })
        ));
        let g96 = GemmKind::W4A16 {
            act: Act16::F16,
            group_size: 96,
        };
        assert!(GemmPlan::new(g96, 4, 64, 64, DeviceInfo::H100).is_err());
        let volta = DeviceInfo {
            cc: (7, 0),
            sm_count: 80,
        };
        assert!(GemmPlan::new(BF16_G128, 4, 64, 64, volta).is_err());
        // Other GPUs than 9.0 (e.g. sm_89, sm_100) run the mma.sync body.
        let p = GemmPlan::new(
            BF16_G128,
            256,
            5120,
            5120,
            DeviceInfo {
                cc: (10, 0),
                sm_count: 148,
            },
        )
        .unwrap();
        assert_eq!(p.path, GemmPath::PrefillMma);
    }

    #[test]
    fn grid_limits_are_typed_errors() {
        // Prefill: 128 tokens per grid.y, at most 65535 of them.
        let ok = 65535 * 128;
        assert!(GemmPlan::new(GemmKind::Bf16, ok, 64, 64, DeviceInfo::H100).is_ok());
        let e = GemmPlan::new(GemmKind::Bf16, ok + 1, 64, 64, DeviceInfo::H100).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("65535"),
            "{e}"
        );
        // Decode at any m (fp8 W8A16, int4 with k % 8 != 0): 32 tokens per grid.z.
        assert!(GemmPlan::new(GemmKind::Fp8W8A16, 65535 * 32, 64, 64, DeviceInfo::A100).is_ok());
        assert!(matches!(
            GemmPlan::new(GemmKind::Fp8W8A16, 65535 * 32 + 1, 64, 64, DeviceInfo::A100),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            GemmPlan::new(BF16_G128, 65535 * 32 + 1, 64, 100, DeviceInfo::H100),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
