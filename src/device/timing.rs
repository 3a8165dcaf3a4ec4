//! CUDA-event timing for benches (criterion's `iter_custom`).

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{sys::CUevent_flags, CudaEvent, CudaStream};

use super::DriverResultExt;
use crate::error::Result;

/// A pair of timing events on one stream.
pub struct EventTimer {
    start: CudaEvent,
    stop: CudaEvent,
}

impl EventTimer {
    /// Two events with timing enabled, in `stream`'s context.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let ctx = stream.context();
        let start = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .op("EventTimer::new")?;
        let stop = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .op("EventTimer::new")?;
        Ok(Self { start, stop })
    }

    /// Records the start on `stream`.
    pub fn start(&self, stream: &CudaStream) -> Result<()> {
        self.start.record(stream).op("EventTimer::start")
    }

    /// Records the stop on `stream`, waits for it, and returns the GPU time between the two.
    pub fn stop(&self, stream: &CudaStream) -> Result<Duration> {
        self.stop.record(stream).op("EventTimer::stop")?;
        let ms = self.start.elapsed_ms(&self.stop).op("EventTimer::stop")?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
    }
}

/// GPU time of `iters` calls of `f` (each enqueues work on `stream`), measured with events around the
/// whole batch: for `criterion::Bencher::iter_custom`. One untimed call first warms up the launch path.
pub fn time_stream(
    stream: &Arc<CudaStream>,
    iters: u64,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    f()?;
    let timer = EventTimer::new(stream)?;
    timer.start(stream)?;
    for _ in 0..iters {
        f()?;
    }
    timer.stop(stream)
}
