//! Dispatch for the MoE block: decode (tensor-core GEMV over the touched experts) or prefill
//! (128 x 128 tensor-core tiles over expert groups padded to 128), the routing pad, the split-K of
//! the down projection. Pure host logic, unit-tested on the CPU.

use std::fmt;

use crate::error::{Error, Result};
use crate::ops::gemm::plan::{
    DeviceInfo, DECODE_MAX_M, DECODE_MIN_SLABS_PER_SPLIT, DECODE_WARPS, SLAB_K,
};

/// Rows of a prefill tile: the routing pads every expert's group to it.
pub const PREFILL_ROWS: usize = 128;
/// Resident decode blocks wanted per SM (as the dense GEMMs).
const DECODE_BLOCKS_PER_SM: usize = 4;

/// Weight format of the routed experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertFormat {
    /// bf16 `[n, k]` row-major.
    Bf16,
    /// int4 group-wise, repacked for bf16 activations (docs/GEMM.md).
    Int4,
    /// fp8 e4m3 with per-channel scales; bf16 activations (W8A16).
    Fp8,
}

impl ExpertFormat {
    /// The ABI code (`L4C_MOE_WEIGHT_*`).
    pub fn code(self) -> i32 {
        match self {
            ExpertFormat::Bf16 => 0,
            ExpertFormat::Int4 => 1,
            ExpertFormat::Fp8 => 2,
        }
    }
}

/// The grouped GEMMs' kernel path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoePath {
    /// Tensor-core GEMV, one block column per expert (count 0 exits at once), `8 * token_tiles` rows
    /// per pass; the down projection splits K in `split_k_down` parts.
    Decode { token_tiles: u32, split_k_down: u32 },
    /// 128 x 128 tiles, mma.sync body.
    PrefillMma,
    /// 128 x 128 tiles, wgmma body (sm_90a).
    PrefillWgmma,
}

/// A MoE dispatch decision, printable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoePlan {
    pub tokens: usize,
    pub experts: usize,
    pub top_k: usize,
    pub hidden: usize,
    pub inter: usize,
    pub format: ExpertFormat,
    pub cc: (u32, u32),
    /// Group padding of the routing (`moe_gate`'s `pad`): 1 for decode, 128 for prefill.
    pub pad: usize,
    pub path: MoePath,
    /// The local experts `expert_begin..expert_end` that run (expert parallelism, docs/MULTI-GPU.md);
    /// `0..experts` unless [`MoePlan::with_range`] narrowed it. Routing stays over all `experts`.
    pub expert_begin: usize,
    pub expert_end: usize,
}

impl MoePlan {
    /// Chooses the path for `tokens` tokens routed to `top_k` of `experts` experts.
    /// Prefill when the average rows per touched expert exceed [`DECODE_MAX_M`], for every format
    /// (fp8 experts: W8A16 on both paths, the codes widened to bf16 in registers).
    pub fn new(
        tokens: usize,
        experts: usize,
        top_k: usize,
        hidden: usize,
        inter: usize,
        format: ExpertFormat,
        dev: DeviceInfo,
    ) -> Result<Self> {
        const OP: &str = "moe plan";
        if experts == 0 || top_k == 0 || top_k > experts {
            return Err(Error::invalid(
                OP,
                format!("top_k {top_k} of {experts} experts"),
            ));
        }
        if hidden == 0 || inter == 0 || hidden % 16 != 0 || inter % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!("hidden {hidden} and inter {inter} must be non-zero multiples of 16"),
            ));
        }
        if dev.cc.0 < 8 {
            return Err(Error::invalid(
                OP,
                format!(
                    "compute capability {}.{}: needs sm_80 or newer",
                    dev.cc.0, dev.cc.1
                ),
            ));
        }
        let slots = tokens * top_k;
        let touched = experts.min(slots).max(1);
        let avg = slots.div_ceil(touched);
        let prefill = avg > DECODE_MAX_M;
        let path = if prefill {
            if dev.cc == (9, 0) {
                MoePath::PrefillWgmma
            } else {
                MoePath::PrefillMma
            }
        } else {
            let token_tiles: u32 = match avg {
                0..=8 => 1,
                9..=16 => 2,
                _ => 4,
            };
            // The down projection (n = hidden) has the fewest blocks: split K to fill the GPU.
            let blocks = hidden.div_ceil(16).div_ceil(DECODE_WARPS) * touched;
            let want = (DECODE_BLOCKS_PER_SM * dev.sm_count as usize).div_ceil(blocks);
            let max_split = (inter.div_ceil(SLAB_K) / DECODE_MIN_SLABS_PER_SPLIT).max(1);
            MoePath::Decode {
                token_tiles,
                split_k_down: want.clamp(1, max_split.min(64)) as u32,
            }
        };
        let pad = if prefill { PREFILL_ROWS } else { 1 };
        if (slots as u128) + (experts as u128) * (pad as u128 - 1) >= u32::MAX as u128 {
            return Err(Error::invalid(
                OP,
                format!("{tokens} tokens x top_k {top_k} exceed the u32 slot range"),
            ));
        }
        // l4c_moe_grouped_gemm's grid limits (CUDA: 65535 on y and z): experts on grid.z (decode),
        // 128-row tiles of the padded rows on grid.y (prefill).
        let row_tiles = (slots + experts * (pad - 1)).div_ceil(PREFILL_ROWS);
        if experts > 65535 || (prefill && row_tiles > 65535) {
            return Err(Error::invalid(
                OP,
                format!(
                    "{tokens} tokens x top_k {top_k} over {experts} experts need {row_tiles} row \
                     tiles (grid.y) and {experts} expert blocks (grid.z); CUDA allows 65535: split the call"
                ),
            ));
        }
        Ok(MoePlan {
            tokens,
            experts,
            top_k,
            hidden,
            inter,
            format,
            cc: dev.cc,
            pad,
            path,
            expert_begin: 0,
            expert_end: experts,
        })
    }
    /// The same plan running only experts `begin..end` (non-empty, inside `0..experts`). The path and
    /// split-K stay those of the full block, so every rank of a split plans alike.
    pub fn with_range(mut self, begin: usize, end: usize) -> Result<Self> {
        if begin >= end || end > self.experts {
            return Err(Error::invalid(
                "moe plan",
                format!(
                    "expert range {begin}..{end}: need a non-empty range inside 0..{}",
                    self.experts
                ),
            ));
        }
        self.expert_begin = begin;
        self.expert_end = end;
        Ok(self)
    }
    /// Whether the plan runs a strict subset of the experts.
    pub fn is_partial(&self) -> bool {
        self.expert_begin != 0 || self.expert_end != self.experts
    }

    /// Sorted positions (rows of the expert activations): slots plus the worst-case padding.
    pub fn rows(&self) -> usize {
        self.tokens * self.top_k + self.experts * (self.pad - 1)
    }

    /// Split-K of the down projection (1 on the prefill path).
    pub fn split_k_down(&self) -> u32 {
        match self.path {
            MoePath::Decode { split_k_down, .. } => split_k_down,
            _ => 1,
        }
    }

    /// f32 elements of split-K workspace the down projection needs.
    pub fn workspace_len(&self) -> usize {
        match self.split_k_down() {
            1 => 0,
            s => s as usize * self.rows() * self.hidden,
        }
    }

    /// Grids (x, y, z) of the gate_up and down launches (decode: z = local experts; prefill: y = row
    /// tiles, all of them: tiles outside the local rows exit at once).
    pub fn grids(&self) -> [(u32, u32, u32); 2] {
        match self.path {
            MoePath::Decode { split_k_down, .. } => [
                (
                    self.inter.div_ceil(16).div_ceil(2) as u32,
                    1,
                    (self.expert_end - self.expert_begin) as u32,
                ),
                (
                    self.hidden.div_ceil(16).div_ceil(DECODE_WARPS) as u32,
                    split_k_down,
                    (self.expert_end - self.expert_begin) as u32,
                ),
            ],
            _ => {
                let y = self.rows().div_ceil(PREFILL_ROWS) as u32;
                [
                    (self.inter.div_ceil(64) as u32, y, 1),
                    (self.hidden.div_ceil(128) as u32, y, 1),
                ]
            }
        }
    }
}

impl fmt::Display for ExpertFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExpertFormat::Bf16 => "bf16",
            ExpertFormat::Int4 => "int4",
            ExpertFormat::Fp8 => "fp8-w8a16",
        })
    }
}

impl fmt::Display for MoePlan {
    /// e.g. `moe bf16 tokens=1 E=16 k=1 hidden=5120 inter=8192 sm_90: decode rows/pass=8
    /// split_k(down)=33 pad=1 grids=256x1x16,80x33x16`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "moe {} tokens={} E={} k={} hidden={} inter={} sm_{}{}: ",
            self.format,
            self.tokens,
            self.experts,
            self.top_k,
            self.hidden,
            self.inter,
            self.cc.0,
            self.cc.1
        )?;
        match self.path {
            MoePath::Decode {
                token_tiles,
                split_k_down,
            } => write!(
                f,
                "decode rows/pass={} split_k(down)={split_k_down}",
                8 * token_tiles
            )?,
            MoePath::PrefillMma => f.write_str("prefill mma.sync 128x128x64")?,
            MoePath::PrefillWgmma => f.write_str("prefill wgmma 128x128x64")?,
        }
        let [a, b] = self.grids();
        write!(
            f,
            " pad={} grids={}x{}x{},{}x{}x{}",
            self.pad, a.0, a.1, a.2, b.0, b.1, b.2
        )?;
        if self.is_partial() {
            write!(f, " experts={}..{}", self.expert_begin, self.expert_end)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_and_prefill_choices() {
        let h100 = DeviceInfo::H100;
        for format in [ExpertFormat::Bf16, ExpertFormat::Int4, ExpertFormat::Fp8] {
            for experts in [16, 128] {
                for tokens in [1, 8, 64, 512, 4096, 16384] {
                    let p = MoePlan::new(tokens, experts, 1, 5120, 8192, format, h100).unwrap();
                    let avg = tokens.div_ceil(experts.min(tokens));
                    let prefill = avg > 32;
                    assert_eq!(matches!(p.path, MoePath::PrefillWgmma), prefill, "{p}");
                    assert_eq!(p.pad, if prefill { 128 } else { 1 }, "{p}");
                    assert_eq!(p.rows(), tokens + experts * (p.pad - 1));
                    if let MoePath::Decode {
                        token_tiles,
                        split_k_down,
                    } = p.path
                    {
                        assert!(8 * token_tiles as usize >= avg.min(32), "{p}");
                        // every split gets at least 8 slabs of the 8192-wide down input
                        assert!(128usize.div_ceil(split_k_down as usize) >= 8, "{p}");
                        assert_eq!(p.workspace_len() > 0, split_k_down > 1);
                    }
                }
            }
        }
    }

    #[test]
    fn display_names_the_choice() {
        let p = MoePlan::new(1, 16, 1, 5120, 8192, ExpertFormat::Int4, DeviceInfo::H100).unwrap();
        assert_eq!(
            p.to_string(),
            "moe int4 tokens=1 E=16 k=1 hidden=5120 inter=8192 sm_90: decode rows/pass=8 \
             split_k(down)=7 pad=1 grids=256x1x16,80x7x16"
        );
        let p = MoePlan::new(
            4096,
            16,
            1,
            5120,
            8192,
            ExpertFormat::Bf16,
            DeviceInfo::A100,
        )
        .unwrap();
        assert_eq!(
            p.to_string(),
            "moe bf16 tokens=4096 E=16 k=1 hidden=5120 inter=8192 sm_80: prefill mma.sync 128x128x64 \
             pad=128 grids=128x48x1,40x48x1"
        );
        // Maverick-like: 128 fp8 experts, 8192 prompt tokens (64 rows per expert) take the prefill.
        let p = MoePlan::new(
            8192,
            128,
            1,
            5120,
            8192,
            ExpertFormat::Fp8,
            DeviceInfo::H100,
        )
        .unwrap();
        assert_eq!(
            p.to_string(),
            "moe fp8-w8a16 tokens=8192 E=128 k=1 hidden=5120 inter=8192 sm_90: prefill wgmma 128x128x64 \
             pad=128 grids=128x191x1,40x191x1"
        );
    }

    #[test]
    fn expert_ranges() {
        let d = DeviceInfo::H100;
        let full = MoePlan::new(1, 16, 1, 5120, 8192, ExpertFormat::Int4, d).unwrap();
        assert_eq!((full.expert_begin, full.expert_end), (0, 16));
        assert!(!full.is_partial());
        assert_eq!(full.with_range(0, 16).unwrap(), full);
        let p = full.with_range(4, 12).unwrap();
        assert!(p.is_partial());
        assert_eq!(p.path, full.path);
        assert_eq!(p.rows(), full.rows());
        assert_eq!(
            p.to_string(),
            "moe int4 tokens=1 E=16 k=1 hidden=5120 inter=8192 sm_90: decode rows/pass=8 \
             split_k(down)=7 pad=1 grids=256x1x8,80x7x8 experts=4..12"
        );
        // Prefill: grid.y covers every row tile whatever the range.
        let pre = MoePlan::new(4096, 16, 1, 5120, 8192, ExpertFormat::Bf16, d).unwrap();
        assert_eq!(pre.with_range(8, 16).unwrap().grids(), pre.grids());
        for (b, e) in [(3, 3), (5, 2), (0, 17), (16, 16)] {
            let err = full.with_range(b, e).unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("range"),
                "{err}"
            );
        }
    }
    #[test]
    fn rejects_bad_shapes() {
        let d = DeviceInfo::H100;
        assert!(MoePlan::new(4, 16, 0, 5120, 8192, ExpertFormat::Bf16, d).is_err());
        assert!(MoePlan::new(4, 4, 5, 5120, 8192, ExpertFormat::Bf16, d).is_err());
        assert!(MoePlan::new(4, 16, 1, 5120 + 8, 8192, ExpertFormat::Bf16, d).is_err());
        assert!(MoePlan::new(4, 16, 1, 5120, 0, ExpertFormat::Bf16, d).is_err());
        let volta = DeviceInfo {
            cc: (7, 0),
            sm_count: 80,
        };
        assert!(MoePlan::new(4, 16, 1, 5120, 8192, ExpertFormat::Bf16, volta).is_err());
        // zero tokens plans (the launch is a no-op)
        assert!(MoePlan::new(0, 16, 1, 5120, 8192, ExpertFormat::Bf16, d).is_ok());
    }

    #[test]
    fn grid_limits_are_typed_errors() {
        let d = DeviceInfo::H100;
        // Prefill rows: tokens * k + 16 * 127 padding, 128 per grid.y tile, at most 65535 tiles.
        let most = 65535 * 128 - 16 * 127;
        assert!(MoePlan::new(most, 16, 1, 128, 64, ExpertFormat::Int4, d).is_ok());
        let e = MoePlan::new(most + 1, 16, 1, 128, 64, ExpertFormat::Int4, d).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("65535"),
            "{e}"
        );
        // Experts on grid.z.
        assert!(MoePlan::new(1, 65536, 1, 128, 64, ExpertFormat::Bf16, d).is_err());
    }
}
