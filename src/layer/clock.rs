//! How a rank's step is timed: a step timer splits one decode step into [`Phase`]s.
//!
//! A serving engine queues a rank's whole step on its stream and synchronises once (or replays
//! a captured graph); it does not wait for the device after every projection. On a CUDA
//! executor the timer therefore records an event before and after each phase on the executor's
//! stream and reads the event times once, when the step is over ([`PhaseTiming::Events`]):
//! each phase's figure is device time, and the host's launch work overlaps the device's work
//! as it would in the engine. [`PhaseTiming::Synchronised`] waits for the device after every
//! phase and takes host wall-clock time (launch latency and the synchronisation included): the
//! way this layer was timed before 2026-12-04, kept for same-run comparisons. On the CPU, where
//! a launch returns when its work is done, both are host wall-clock time.

use std::time::{Duration, Instant};

use tpla_runtime::{Executor, RuntimeError};

use super::rank::RankTimes;

/// How the phases of a layer step are timed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PhaseTiming {
    /// Events on the executor's stream around each phase, read once at the end of the step
    /// (device time; the CPU takes host time, its launches being synchronous).
    #[default]
    Events,
    /// Wait for the device after every phase and take host wall-clock time.
    Synchronised,
}

/// A part of a rank's step (a field of [`RankTimes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Dense projections.
    Projections,
    /// Decode attention.
    Attention,
    /// The element-wise kernels.
    Glue,
    /// Collectives that cross devices ([`tpla_runtime::AllReduce::crosses_devices`]).
    Collective,
}

impl Phase {
    fn bucket(self, t: &mut RankTimes) -> &mut Duration {
        match self {
            Phase::Projections => &mut t.projections,
            Phase::Attention => &mut t.attention,
            Phase::Glue => &mut t.glue,
            Phase::Collective => &mut t.collective,
        }
    }
}

/// What a rank's executor can time with.
#[derive(Clone)]
pub(crate) enum Clock {
    /// Host wall-clock time after a synchronisation.
    Host,
    /// Events on a CUDA stream.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<tpla_runtime::cudarc::driver::CudaStream>),
}

impl Clock {
    /// How this clock times a phase, for reports.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Clock::Host => "host clock, each phase waited for (launch latency included)",
            #[cfg(feature = "cuda")]
            Clock::Cuda(_) => {
                "device events around each phase on the executor's stream, read once the queued work is done"
            }
        }
    }

    /// The clock for `exec` under `timing`: events on a CUDA executor's stream when `timing` is
    /// [`PhaseTiming::Events`], else the host clock.
    pub(crate) fn for_executor<X: Executor + 'static>(exec: &X, timing: PhaseTiming) -> Clock {
        #[cfg(not(feature = "cuda"))]
        let _ = (exec, timing);
        #[cfg(feature = "cuda")]
        if timing == PhaseTiming::Events {
            use std::any::Any;
            if let Some(cuda) =
                (exec as &dyn Any).downcast_ref::<tpla_runtime::cuda::CudaExecutor>()
            {
                return Clock::Cuda(cuda.stream().clone());
            }
        }
        Clock::Host
    }
}

/// Orders rank `r`'s next work after everything already queued by the other ranks' clocks on
/// the same device (`clocks[r]` excepted), without the host waiting: ranks that share one
/// device each have a stream of their own, and a rank's kernels running beside another rank's
/// would share the device's multiprocessors, which no rank does on its own GPU (and which would
/// put the other rank's time into this rank's phases). Ranks on other devices run in parallel,
/// as they do in a deployment. A no-op for host clocks (their work is already done).
pub(crate) fn serialise(clocks: &[Clock], r: usize) -> Result<(), RuntimeError> {
    #[cfg(feature = "cuda")]
    if let Some(Clock::Cuda(mine)) = clocks.get(r) {
        let device = mine.context().ordinal();
        for (i, c) in clocks.iter().enumerate() {
            if let Clock::Cuda(other) = c {
                if i != r
                    && other.cu_stream() != mine.cu_stream()
                    && other.context().ordinal() == device
                {
                    mine.join(other).map_err(|e| event_err("stream join", e))?;
                }
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (clocks, r);
    Ok(())
}

/// A phase whose end has been queued but not yet read.
#[cfg(feature = "cuda")]
struct Pending {
    phase: Phase,
    start: tpla_runtime::cudarc::driver::CudaEvent,
    end: tpla_runtime::cudarc::driver::CudaEvent,
}

/// Times the phases of one rank's step; [`StepTimer::finish`] gives the [`RankTimes`].
pub(crate) struct StepTimer {
    clock: Clock,
    done: RankTimes,
    #[cfg(feature = "cuda")]
    pending: Vec<Pending>,
}

#[cfg(feature = "cuda")]
fn event_err(what: &str, e: tpla_runtime::cudarc::driver::DriverError) -> RuntimeError {
    tpla_runtime::cuda::device::driver_err(&format!("layer step timing: {what}"), e)
}

impl StepTimer {
    /// A timer on `clock` with nothing timed yet.
    pub(crate) fn new(clock: &Clock) -> StepTimer {
        StepTimer {
            clock: clock.clone(),
            done: RankTimes::default(),
            #[cfg(feature = "cuda")]
            pending: Vec::new(),
        }
    }

    /// Runs `f` (which queues `phase`'s work on `exec`) and times it.
    pub(crate) fn time<X: Executor, T>(
        &mut self,
        exec: &X,
        phase: Phase,
        f: impl FnOnce() -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        match &self.clock {
            Clock::Host => {
                let s = Instant::now();
                let r = f()?;
                exec.synchronize()?;
                *phase.bucket(&mut self.done) += s.elapsed();
                Ok(r)
            }
            #[cfg(feature = "cuda")]
            Clock::Cuda(stream) => {
                let flags =
                    Some(tpla_runtime::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                let start = stream
                    .record_event(flags)
                    .map_err(|e| event_err("event record", e))?;
                let r = f()?;
                let end = stream
                    .record_event(flags)
                    .map_err(|e| event_err("event record", e))?;
                self.pending.push(Pending { phase, start, end });
                Ok(r)
            }
        }
    }

    /// Times `f`, which queues work on every rank at once (a collective), as `phase` of every
    /// rank: on CUDA clocks an event on each rank's stream before and after; on host clocks the
    /// host time of `f` and of waiting for every executor, added to each rank.
    pub(crate) fn time_all<X: Executor, T>(
        timers: &mut [StepTimer],
        execs: &[X],
        phase: Phase,
        f: impl FnOnce() -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        #[cfg(feature = "cuda")]
        {
            let streams: Option<Vec<_>> = timers
                .iter()
                .map(|t| match &t.clock {
                    Clock::Cuda(stream) => Some(stream.clone()),
                    Clock::Host => None,
                })
                .collect();
            if let Some(streams) = streams {
                let flags =
                    Some(tpla_runtime::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                let record = |s: &tpla_runtime::cudarc::driver::CudaStream| {
                    s.record_event(flags)
                        .map_err(|e| event_err("event record", e))
                };
                let starts = streams
                    .iter()
                    .map(|s| record(s))
                    .collect::<Result<Vec<_>, _>>()?;
                let r = f()?;
                for ((t, s), start) in timers.iter_mut().zip(&streams).zip(starts) {
                    let end = record(s)?;
                    t.pending.push(Pending { phase, start, end });
                }
                return Ok(r);
            }
        }
        let s = Instant::now();
        let r = f()?;
        for e in execs {
            e.synchronize()?;
        }
        let took = s.elapsed();
        for t in timers.iter_mut() {
            *phase.bucket(&mut t.done) += took;
        }
        Ok(r)
    }

    /// Waits for the step's last phase and returns every phase's time.
    pub(crate) fn finish(self) -> Result<RankTimes, RuntimeError> {
        #[allow(unused_mut)]
        let mut done = self.done;
        #[cfg(feature = "cuda")]
        for p in &self.pending {
            p.end
                .synchronize()
                .map_err(|e| event_err("event synchronize", e))?;
            let ms = p
                .start
                .elapsed_ms(&p.end)
                .map_err(|e| event_err("event elapsed", e))?;
            *p.phase.bucket(&mut done) += Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3);
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpla_runtime::CpuExecutor;

    #[test]
    fn the_host_clock_adds_each_phase_to_its_own_bucket() {
        let exec = CpuExecutor::new(1).unwrap();
        let clock = Clock::for_executor(&exec, PhaseTiming::Events);
        assert!(matches!(clock, Clock::Host), "a CPU executor has no events");
        let mut t = StepTimer::new(&clock);
        let pause = |ms| {
            move || {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
        };
        t.time(&exec, Phase::Attention, pause(20)).unwrap();
        t.time(&exec, Phase::Glue, pause(5)).unwrap();
        t.time(&exec, Phase::Attention, pause(10)).unwrap();
        let r = t.finish().unwrap();
        assert!(r.attention >= Duration::from_millis(30), "{r:?}");
        assert!(
            r.glue >= Duration::from_millis(5) && r.glue < r.attention,
            "{r:?}"
        );
        assert_eq!(r.projections, Duration::ZERO);
        assert_eq!(r.host, Duration::ZERO);
    }

    #[test]
    fn a_failing_phase_is_not_timed_and_its_error_comes_back() {
        let exec = CpuExecutor::new(1).unwrap();
        let mut t = StepTimer::new(&Clock::Host);
        let e = t
            .time(&exec, Phase::Projections, || -> Result<(), _> {
                Err(RuntimeError::InvalidInput("bad".into()))
            })
            .unwrap_err();
        assert!(e.to_string().contains("bad"));
        assert_eq!(t.finish().unwrap(), RankTimes::default());
    }
}
