//! The MoE block on the GPU: device routing (`moe_gate`), grouped expert GEMMs with the router score
//! and SwiGLU fused (kernels/moe_grouped_gemm.cu), combine with the shared expert.
//!
//! The CPU specification is [`crate::reference::moe::moe_block`]; docs/MOE.md has the design.
//! Pipeline of [`moe_block`] (all on one stream, no host synchronisation, CUDA-graph capturable):
//! router GEMM (bf16 logits) -> `moe_gate` (top-k, sigmoid, expert-sorted permutation, groups padded to
//! the plan's row tile) -> grouped gate_up (token rows gathered through the permutation, outputs
//! scaled by the score, SwiGLU in the epilogue) -> grouped down (sorted rows) -> shared expert
//! (three dense GEMMs + silu_mul) -> combine (scatter-add by the inverse permutation onto the shared
//! expert's output).
//!
//! Expert parallelism (docs/MULTI-GPU.md): a block made by [`GpuMoe::new_range`] /
//! [`GpuMoe::upload_range`] holds experts `e0..e1` only; it routes over all experts (the router is
//! replicated) but runs and combines only its own, and adds the shared expert only if it holds one.
//! The sum of the outputs of ranks covering `0..E` (one with the shared expert) is the full block.

pub mod plan;

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::bf16;

pub use plan::{ExpertFormat, MoePath, MoePlan};

use crate::device::DriverResultExt;
use crate::error::{check_len, Error, Result};
use crate::ops::gemm::{GemmScratch, GpuBf16Weight, GpuLinear};
use crate::ops::moe_gate::{moe_gate, MoeGateBuffers};
use crate::quant::repack::Act16;
use crate::quant::DenseWeight;
use crate::reference::moe::{SwiGlu, MAX_TOP_K};

/// One SwiGLU MLP on the GPU (an expert or the shared expert).
pub struct GpuExpert {
    pub gate: GpuLinear,
    pub up: GpuLinear,
    pub down: GpuLinear,
}

impl GpuExpert {
    /// Uploads a host MLP (each weight in its own format).
    pub fn upload(stream: &Arc<CudaStream>, mlp: &SwiGlu) -> Result<Self> {
        mlp.dims()?;
        Ok(GpuExpert {
            gate: GpuLinear::upload(stream, &mlp.gate)?,
            up: GpuLinear::upload(stream, &mlp.up)?,
            down: GpuLinear::upload(stream, &mlp.down)?,
        })
    }
    /// (hidden, intermediate), or an error naming the mismatch.
    fn dims(&self, op: &'static str, what: &str) -> Result<(usize, usize)> {
        let (g, u, d) = (&self.gate, &self.up, &self.down);
        crate::reference::moe::swiglu_dims(
            op,
            what,
            [(g.n(), g.k()), (u.n(), u.k()), (d.n(), d.k())],
        )
    }
}

/// Device tables of per-expert pointers for one projection (the kernels' `l4c_moe_expert_weights`).
/// Pointer tables rather than one stacked buffer: experts are uploaded (and int4-repacked) one at a
/// time, so loading never needs a second copy of all experts, and [`GpuMoe::new`] takes weights
/// already on the device without moving them. The kernel pays one 8-byte load per block.
#[cfg_attr(not(llama4_kernels), allow(dead_code))] // read by the launches only
struct PtrTables {
    data: CudaSlice<u64>,
    scales: Option<CudaSlice<u64>>,
    zero_bias: Option<CudaSlice<u64>>,
    /// int4: (k_slabs, groups, group_size); zeros otherwise.
    int4: (usize, usize, usize),
}

/// A MoE block resident on the GPU.
pub struct GpuMoe {
    hidden: usize,
    inter: usize,
    format: ExpertFormat,
    router: GpuBf16Weight,
    /// None: this rank does not add the shared expert (expert parallelism: exactly one rank does).
    shared: Option<GpuExpert>,
    gate: PtrTables,
    up: PtrTables,
    down: PtrTables,
    /// Owns the expert allocations the tables point into: experts `range`, entry e - range.start.
    #[allow(dead_code)] // held, never read: the tables point into it
    experts: Vec<GpuExpert>,
    /// The local experts; `0..router rows` unless built by new_range / upload_range.
    range: Range<usize>,
}

/// The format of one routed-expert projection (all experts must agree).
fn format_of(w: &GpuLinear) -> ExpertFormat {
    match w {
        GpuLinear::Bf16(_) => ExpertFormat::Bf16,
        GpuLinear::Int4(_) => ExpertFormat::Int4,
        GpuLinear::Fp8(_) => ExpertFormat::Fp8,
    }
}

/// Builds the pointer tables of one projection over all experts.
fn tables<'a>(
    stream: &Arc<CudaStream>,
    what: &str,
    ws: impl Iterator<Item = &'a GpuLinear>,
) -> Result<PtrTables> {
    const OP: &str = "GpuMoe::new";
    let (mut data, mut scales, mut zb) = (Vec::new(), Vec::new(), Vec::new());
    let mut int4 = None;
    let mut asym: Option<bool> = None;
    for (e, w) in ws.enumerate() {
        match w {
            GpuLinear::Bf16(b) => data.push(b.data.device_ptr(stream).0),
            GpuLinear::Fp8(f) => {
                data.push(f.codes.device_ptr(stream).0);
                scales.push(f.scales.device_ptr(stream).0);
            }
            GpuLinear::Int4(q) => {
                if q.act != Act16::BF16 {
                    return Err(Error::invalid(
                        OP,
                        format!("{what}[{e}] is repacked for f16 activations; the MoE takes bf16"),
                    ));
                }
                let this = (q.k_slabs, q.groups, q.group_size);
                if *int4.get_or_insert(this) != this {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "{what}[{e}] has int4 group size {} ({} groups); expert 0 has {:?}",
                            q.group_size, q.groups, int4
                        ),
                    ));
                }
                if *asym.get_or_insert(q.zero_bias.is_some()) != q.zero_bias.is_some() {
                    return Err(Error::invalid(
                        OP,
                        format!("{what}[{e}]: experts mix symmetric and asymmetric int4"),
                    ));
                }
                data.push(q.qweight.device_ptr(stream).0);
                scales.push(q.scales.device_ptr(stream).0);
                if let Some(z) = &q.zero_bias {
                    zb.push(z.device_ptr(stream).0);
                }
            }
        }
    }
    let up = |v: Vec<u64>| -> Result<Option<CudaSlice<u64>>> {
        if v.is_empty() {
            Ok(None)
        } else {
            stream.clone_htod(&v).op(OP).map(Some)
        }
    };
    Ok(PtrTables {
        data: stream.clone_htod(&data).op(OP)?,
        scales: up(scales)?,
        zero_bias: up(zb)?,
        int4: int4.unwrap_or((0, 0, 0)),
    })
}

impl GpuMoe {
    /// Assembles a block from weights already on the device (all routed experts in one format; the
    /// shared expert in any). Checks every shape: router `[E, hidden]`, experts `[inter, hidden]` /
    /// `[hidden, inter]`, hidden and inter multiples of 16, int4 experts repacked for bf16 with one
    /// group size per projection.
    pub fn new(
        stream: &Arc<CudaStream>,
        router: GpuBf16Weight,
        experts: Vec<GpuExpert>,
        shared: GpuExpert,
    ) -> Result<Self> {
        if router.n != experts.len() {
            return Err(Error::shape(
                "GpuMoe::new",
                format!("router has {} rows for {} experts", router.n, experts.len()),
            ));
        }
        let range = 0..experts.len();
        Self::new_range(stream, router, experts, Some(shared), range)
    }

    /// Expert parallelism: a block holding only experts `range` of the router's `E` (`experts[i]` is
    /// expert `range.start + i`); routing stays over all E. `shared`: the shared expert on exactly one
    /// rank, None on the others (they skip it; the combine adds nothing for it). Checks as
    /// [`GpuMoe::new`], plus: `range` non-empty inside `0..E`, `experts.len() == range.len()`.
    pub fn new_range(
        stream: &Arc<CudaStream>,
        router: GpuBf16Weight,
        experts: Vec<GpuExpert>,
        shared: Option<GpuExpert>,
        range: Range<usize>,
    ) -> Result<Self> {
        const OP: &str = "GpuMoe::new";
        let total = router.n;
        if total == 0 || total > 8192 {
            return Err(Error::invalid(
                OP,
                format!("router has {total} rows (experts; need 1 to 8192)"),
            ));
        }
        if range.start >= range.end || range.end > total {
            return Err(Error::invalid(
                OP,
                format!("expert range {range:?}: need a non-empty range inside 0..{total}"),
            ));
        }
        if experts.len() != range.len() {
            return Err(Error::shape(
                OP,
                format!(
                    "{} experts given for the range {range:?} ({} experts)",
                    experts.len(),
                    range.len()
                ),
            ));
        }
        let hidden = router.k;
        check_len(OP, "router data", router.data.len(), router.n * router.k)?;
        let (h0, inter) = experts[0].dims(OP, "expert 0")?;
        let format = format_of(&experts[0].gate);
        for (e, x) in experts.iter().enumerate() {
            let d = x.dims(OP, &format!("expert {e}"))?;
            if d != (h0, inter) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "expert {e} is (hidden, inter) = {d:?}, expert 0 {:?}",
                        (h0, inter)
                    ),
                ));
            }
            for (name, w) in [("gate", &x.gate), ("up", &x.up), ("down", &x.down)] {
                if format_of(w) != format {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "expert {e} {name} is {:?}; routed experts must all be {format:?}",
                            format_of(w)
                        ),
                    ));
                }
            }
        }
        if h0 != hidden {
            return Err(Error::shape(
                OP,
                format!("experts take hidden {h0}, the router {hidden}"),
            ));
        }
        if hidden % 16 != 0 || inter % 16 != 0 {
            return Err(Error::invalid(
                OP,
                format!("hidden {hidden} and inter {inter} must be multiples of 16"),
            ));
        }
        if let Some(sh) = &shared {
            let (hs, _) = sh.dims(OP, "shared expert")?;
            if hs != hidden {
                return Err(Error::shape(
                    OP,
                    format!("shared expert takes hidden {hs}, the router {hidden}"),
                ));
            }
        }
        let gate = tables(stream, "gate", experts.iter().map(|x| &x.gate))?;
        let up = tables(stream, "up", experts.iter().map(|x| &x.up))?;
        let down = tables(stream, "down", experts.iter().map(|x| &x.down))?;
        if gate.int4 != up.int4 || gate.zero_bias.is_some() != up.zero_bias.is_some() {
            return Err(Error::invalid(
                OP,
                "gate and up must share the int4 group size and symmetry",
            ));
        }
        Ok(GpuMoe {
            hidden,
            inter,
            format,
            router,
            shared,
            gate,
            up,
            down,
            experts,
            range,
        })
    }

    /// Uploads host weights (each [`crate::quant::Weight`] in its own format; the router as bf16).
    pub fn upload(
        stream: &Arc<CudaStream>,
        router: &DenseWeight,
        experts: &[SwiGlu],
        shared: &SwiGlu,
    ) -> Result<Self> {
        let r = GpuBf16Weight::upload(stream, router)?;
        let xs = experts
            .iter()
            .map(|m| GpuExpert::upload(stream, m))
            .collect::<Result<Vec<_>>>()?;
        let s = GpuExpert::upload(stream, shared)?;
        Self::new(stream, r, xs, s)
    }

    /// Expert parallelism: uploads the router (all E rows) and only the local experts
    /// (`experts[i]` is expert `range.start + i`, `experts.len() == range.len()`), plus the shared
    /// expert where given (exactly one rank). See [`GpuMoe::new_range`].
    pub fn upload_range(
        stream: &Arc<CudaStream>,
        router: &DenseWeight,
        experts: &[SwiGlu],
        shared: Option<&SwiGlu>,
        range: Range<usize>,
    ) -> Result<Self> {
        if experts.len() != range.len() {
            return Err(Error::shape(
                "GpuMoe::upload_range",
                format!(
                    "{} experts given for the range {range:?} ({} experts)",
                    experts.len(),
                    range.len()
                ),
            ));
        }
        let r = GpuBf16Weight::upload(stream, router)?;
        let xs = experts
            .iter()
            .map(|m| GpuExpert::upload(stream, m))
            .collect::<Result<Vec<_>>>()?;
        let s = shared.map(|m| GpuExpert::upload(stream, m)).transpose()?;
        Self::new_range(stream, r, xs, s, range)
    }

    /// Hidden size.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    /// Routed experts' intermediate size.
    pub fn inter(&self) -> usize {
        self.inter
    }
    /// Number of routed experts (all of them: the router's rows, also for a partial block).
    pub fn experts(&self) -> usize {
        self.router.n
    }
    /// The experts this block runs (`0..experts()` unless built by new_range / upload_range).
    pub fn expert_range(&self) -> Range<usize> {
        self.range.clone()
    }
    /// Whether this block adds the shared expert.
    pub fn adds_shared(&self) -> bool {
        self.shared.is_some()
    }
    /// Format of the routed experts.
    pub fn format(&self) -> ExpertFormat {
        self.format
    }
}

/// Reusable device scratch of the MoE block (routing buffers, expert activations, the GEMMs'
/// scratch). Buffers grow on demand and are reused, so steady-state calls of one shape allocate
/// nothing. One per stream.
#[derive(Default)]
pub struct MoeScratch {
    gemm: GemmScratch,
    gate: Option<MoeGateBuffers>,
    logits: Option<CudaSlice<bf16>>,
    h: Option<CudaSlice<bf16>>,
    y: Option<CudaSlice<bf16>>,
    partials: Option<CudaSlice<f32>>,
    sg: Option<CudaSlice<bf16>>,
    su: Option<CudaSlice<bf16>>,
    sh: Option<CudaSlice<bf16>>,
    so: Option<CudaSlice<bf16>>,
    plan: Option<MoePlan>,
}

impl MoeScratch {
    /// An empty scratch.
    pub fn new() -> Self {
        Self::default()
    }
    /// The plan of the last [`moe_block`] call.
    pub fn last_plan(&self) -> Option<&MoePlan> {
        self.plan.as_ref()
    }
    /// The routing of the last [`moe_block`] call (device buffers; for tests and debugging).
    pub fn routing(&self) -> Option<&MoeGateBuffers> {
        self.gate.as_ref()
    }
}

/// Makes `slot` hold at least `len` elements (zeroed when newly allocated).
fn grow<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    slot: &mut Option<CudaSlice<T>>,
    stream: &Arc<CudaStream>,
    len: usize,
) -> Result<()> {
    if !matches!(slot, Some(b) if b.len() >= len) {
        *slot = Some(stream.alloc_zeros::<T>(len.max(1)).op("moe_block")?);
    }
    Ok(())
}

/// `out[tokens, hidden] = shared(x) + Σ_j expert_{e_j}(x * score_j)` with top-`top_k` routing, no host
/// synchronisation (CUDA-graph capturable). `x` and `out` are bf16 `[tokens, hidden]` (at least).
pub fn moe_block(
    stream: &Arc<CudaStream>,
    x: &CudaSlice<bf16>,
    tokens: usize,
    moe: &GpuMoe,
    top_k: usize,
    out: &mut CudaSlice<bf16>,
    scratch: &mut MoeScratch,
) -> Result<()> {
    const OP: &str = "moe_block";
    let (hidden, e) = (moe.hidden, moe.router.n);
    if top_k == 0 || top_k > MAX_TOP_K.min(e) {
        return Err(Error::invalid(
            OP,
            format!("top_k = {top_k}: need 1 <= k <= min({MAX_TOP_K}, experts = {e})"),
        ));
    }
    if x.len() < tokens * hidden {
        return Err(Error::shape(
            OP,
            format!(
                "x has {} elements, [tokens={tokens}, hidden={hidden}] needs {}",
                x.len(),
                tokens * hidden
            ),
        ));
    }
    if out.len() < tokens * hidden {
        return Err(Error::shape(
            OP,
            format!(
                "out has {} elements, [tokens={tokens}, hidden={hidden}] needs {}",
                out.len(),
                tokens * hidden
            ),
        ));
    }
    let dev = crate::ops::gemm::device_info(stream)?;
    let plan = MoePlan::new(tokens, e, top_k, hidden, moe.inter, moe.format, dev)?
        .with_range(moe.range.start, moe.range.end)?;
    scratch.plan = Some(plan);
    if tokens == 0 {
        return Ok(());
    }
    let rows = plan.rows();
    let shape = (tokens, e, top_k, plan.pad);
    if scratch.gate.as_ref().map(|g| g.shape()) != Some(shape) {
        scratch.gate = Some(MoeGateBuffers::new(stream, tokens, e, top_k, plan.pad)?);
    }
    grow(&mut scratch.logits, stream, tokens * e)?;
    grow(&mut scratch.h, stream, rows * moe.inter)?;
    grow(&mut scratch.y, stream, rows * hidden)?;
    if plan.workspace_len() > 0 {
        grow(&mut scratch.partials, stream, plan.workspace_len())?;
    }
    let si = moe.shared.as_ref().map_or(0, |m| m.gate.n());
    grow(&mut scratch.sg, stream, tokens * si)?;
    grow(&mut scratch.su, stream, tokens * si)?;
    grow(&mut scratch.sh, stream, tokens * si)?;
    grow(&mut scratch.so, stream, tokens * hidden)?;
    let MoeScratch {
        gemm,
        gate,
        logits,
        h,
        y,
        partials,
        sg,
        su,
        sh,
        so,
        ..
    } = scratch;
    let (gate, logits, h, y) = (
        gate.as_mut().expect("made above"),
        logits.as_mut().expect("grown"),
        h.as_mut().expect("grown"),
        y.as_mut().expect("grown"),
    );
    let (sg, su, sh, so) = (
        sg.as_mut().expect("grown"),
        su.as_mut().expect("grown"),
        sh.as_mut().expect("grown"),
        so.as_mut().expect("grown"),
    );

    // Routing.
    crate::ops::gemm::gemm_bf16(stream, x, tokens, &moe.router, None, logits, gemm)?;
    moe_gate(stream, &logits.slice(0..tokens * e), gate)?;
    // Routed experts.
    launch::grouped(
        stream,
        &plan,
        Grouped {
            x,
            gather: true,
            scores: true,
            w: &moe.gate,
            w2: Some(&moe.up),
            n: moe.inter,
            k: hidden,
            split_k: 1,
        },
        gate,
        h,
        None,
    )?;
    launch::grouped(
        stream,
        &plan,
        Grouped {
            x: h,
            gather: false,
            scores: false,
            w: &moe.down,
            w2: None,
            n: hidden,
            k: moe.inter,
            split_k: plan.split_k_down(),
        },
        gate,
        y,
        partials.as_mut(),
    )?;
    // Shared expert (on the one rank that holds it).
    if let Some(shared) = &moe.shared {
        shared.gate.gemm(stream, x, tokens, None, sg, gemm)?;
        shared.up.gemm(stream, x, tokens, None, su, gemm)?;
        {
            let len = tokens * si;
            let mut shv = sh.slice_mut(0..len);
            crate::ops::silu_mul::<bf16, bf16>(
                stream,
                &sg.slice(0..len),
                &su.slice(0..len),
                &mut shv,
            )?;
        }
        shared.down.gemm(stream, sh, tokens, None, so, gemm)?;
    }
    // Combine (a partial block adds its own experts' slots only).
    launch::combine(
        stream,
        &plan,
        y,
        gate,
        moe.shared.is_some().then_some(&*so),
        hidden,
        out,
    )
}

/// One grouped GEMM call of [`launch::grouped`].
#[cfg_attr(not(llama4_kernels), allow(dead_code))] // read by the launch only
struct Grouped<'a> {
    x: &'a CudaSlice<bf16>,
    gather: bool,
    scores: bool,
    w: &'a PtrTables,
    w2: Option<&'a PtrTables>,
    n: usize,
    k: usize,
    split_k: u32,
}

#[cfg(not(llama4_kernels))]
mod launch {
    //! Without compiled kernels every launch is a typed error.
    use super::*;

    pub(super) fn grouped(
        _: &Arc<CudaStream>,
        _: &MoePlan,
        _: Grouped<'_>,
        _: &MoeGateBuffers,
        _: &mut CudaSlice<bf16>,
        _: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        Err(Error::KernelsNotBuilt("moe_grouped_gemm"))
    }

    pub(super) fn combine(
        _: &Arc<CudaStream>,
        _: &MoePlan,
        _: &CudaSlice<bf16>,
        _: &MoeGateBuffers,
        _: Option<&CudaSlice<bf16>>,
        _: usize,
        _: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        Err(Error::KernelsNotBuilt("moe_combine"))
    }
}

#[cfg(llama4_kernels)]
mod launch {
    //! Fills the C ABI's params structs and calls the launchers.
    use std::ffi::c_void;

    use cudarc::driver::DevicePtrMut;

    use super::*;
    use crate::ops::{launch, or_null, or_null_mut};
    use crate::sys;

    fn weights(stream: &Arc<CudaStream>, t: &PtrTables) -> sys::l4c_moe_expert_weights {
        let p = |s: &CudaSlice<u64>| s.device_ptr(stream).0 as usize as *const *const c_void;
        sys::l4c_moe_expert_weights {
            data: p(&t.data),
            scales: t.scales.as_ref().map_or(std::ptr::null(), p),
            zero_bias: t.zero_bias.as_ref().map_or(std::ptr::null(), p),
        }
    }

    pub(super) fn grouped(
        stream: &Arc<CudaStream>,
        plan: &MoePlan,
        g: Grouped<'_>,
        route: &MoeGateBuffers,
        out: &mut CudaSlice<bf16>,
        workspace: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        const OP: &str = "moe_grouped_gemm";
        let rows = plan.rows();
        check_len(OP, "sorted_slots", route.sorted_slots.len(), rows.max(1))?;
        if out.len() < rows * g.n {
            return Err(Error::shape(OP, "out is smaller than rows x n"));
        }
        let x_rows = if g.gather { plan.tokens } else { rows };
        if g.x.len() < x_rows * g.k {
            return Err(Error::shape(OP, "x is smaller than its rows x k"));
        }
        if g.split_k > 1
            && workspace.as_ref().map_or(0, |w| w.len()) < g.split_k as usize * rows * g.n
        {
            return Err(Error::invalid(OP, "split-K workspace too small"));
        }
        let (token_tiles, path) = match plan.path {
            MoePath::Decode { token_tiles, .. } => (token_tiles as i32, 1),
            _ => (1, 2),
        };
        let (k_slabs, groups, group_size) = g.w.int4;
        let (xp, _gx) = g.x.device_ptr(stream);
        let (sp, _gs) = route.sorted_slots.device_ptr(stream);
        let (scp, _gsc) = route.topk_scores.device_ptr(stream);
        let (cp, _gc) = route.counts.device_ptr(stream);
        let (offp, _go) = route.offsets.device_ptr(stream);
        let wsp = workspace.map(|w| w.device_ptr_mut(stream));
        let (op_, _gout) = out.device_ptr_mut(stream);
        let w = weights(stream, g.w);
        let w2 = g.w2.map_or(w, |t| weights(stream, t));
        let p = sys::l4c_moe_grouped_gemm_params {
            x: xp as usize as *const c_void,
            sorted_slots: sp as usize as *const u32,
            scores: if g.scores {
                scp as usize as *const f32
            } else {
                std::ptr::null()
            },
            counts: cp as usize as *const u32,
            offsets: offp as usize as *const u32,
            w,
            w2,
            out: op_ as usize as *mut c_void,
            workspace: or_null_mut(&wsp),
            rows: rows as i64,
            tokens: plan.tokens as i64,
            topk: plan.top_k as i64,
            experts: plan.experts as i64,
            pad: plan.pad as i64,
            n: g.n as i64,
            k: g.k as i64,
            ldx: g.k as i64,
            ldo: g.n as i64,
            k_slabs: k_slabs as i64,
            groups: groups as i64,
            group_size: group_size as i32,
            gather: g.gather as i32,
            weight_format: plan.format.code(),
            epilogue: if g.w2.is_some() { 1 } else { 0 },
            path,
            token_tiles,
            split_k: g.split_k as i32,
            expert_begin: plan.expert_begin as i64,
            expert_end: plan.expert_end as i64,
        };
        launch(OP, stream, |st| {
            // SAFETY: the routing buffers were made by MoeGateBuffers::new for (tokens, experts, k,
            // pad) of this plan (rows = their sorted capacity), x / out / workspace were checked
            // against rows x k / n above, the pointer tables hold expert_end - expert_begin live device
            // pointers (the plan's range is the GpuMoe's) to weights of [n, k] validated by
            // GpuMoe::new_range (kept alive by the GpuMoe); the guards order
            // every buffer on this stream and the launcher only enqueues work.
            unsafe { sys::l4c_moe_grouped_gemm(&p, st) }
        })
    }

    pub(super) fn combine(
        stream: &Arc<CudaStream>,
        plan: &MoePlan,
        y: &CudaSlice<bf16>,
        route: &MoeGateBuffers,
        shared: Option<&CudaSlice<bf16>>,
        n: usize,
        out: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        const OP: &str = "moe_combine";
        let (tokens, top_k, rows) = (plan.tokens, plan.top_k, plan.rows());
        check_len(OP, "offsets", route.offsets.len(), plan.experts + 1)?;
        if y.len() < rows * n || out.len() < tokens * n || route.inverse.len() < tokens * top_k {
            return Err(Error::shape(OP, "buffers smaller than the routing needs"));
        }
        if shared.is_some_and(|s| s.len() < tokens * n) {
            return Err(Error::shape(OP, "shared output smaller than [tokens, n]"));
        }
        let (yp, _gy) = y.device_ptr(stream);
        let (ip, _gi) = route.inverse.device_ptr(stream);
        let sp = shared.map(|s| s.device_ptr(stream));
        let (offp, _gof) = route.offsets.device_ptr(stream);
        let (op_, _go) = out.device_ptr_mut(stream);
        let p = sys::l4c_moe_combine_params {
            y_sorted: yp as usize as *const c_void,
            inverse: ip as usize as *const u32,
            shared: or_null(&sp),
            out: op_ as usize as *mut c_void,
            tokens: tokens as i64,
            topk: top_k as i64,
            n: n as i64,
            rows: rows as i64,
            ldy: n as i64,
            lds: n as i64,
            ldo: n as i64,
            // The default (full) range passes no offsets: every position is local, as before.
            offsets: if plan.is_partial() {
                offp as usize as *const u32
            } else {
                std::ptr::null()
            },
            expert_begin: plan.expert_begin as i64,
            expert_end: plan.expert_end as i64,
        };
        launch(OP, stream, |st| {
            // SAFETY: y holds rows x n, out and shared tokens x n, inverse tokens x top_k entries, all
            // < rows (moe_gate's contract), offsets experts + 1 entries and the range lies inside
            // 0..=experts (MoePlan::with_range); live buffers ordered on this stream by the guards.
            unsafe { sys::l4c_moe_combine(&p, st) }
        })
    }
}
