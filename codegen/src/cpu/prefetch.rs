//! Software prefetch for the generated code: Cranelift IR has no prefetch instruction, so the
//! paged block loop calls [`host_prefetch`] on the rows of the block after the one it loads,
//! and the memory system fetches them while the current block is computed (the CPU side of
//! `pipelined(STAGES)`).

/// Symbol name of [`host_prefetch`].
pub(super) const PREFETCH_SYMBOL: &str = "tpla_cpu_prefetch";

/// Hints that the `bytes` bytes at `ptr` will be read soon (into L2: a block of cache rows is
/// larger than L1). A hint only: any address is accepted and nothing is read architecturally.
pub(super) extern "C" fn host_prefetch(ptr: u64, bytes: u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let end = ptr.wrapping_add(bytes);
        let mut line = ptr & !63;
        while line < end {
            // SAFETY: `prefetcht1` never faults and has no architectural effect, whatever the
            // address; SSE is part of the x86_64 baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(line as usize as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_accepts_any_address() {
        let v = vec![1u8; 4096];
        host_prefetch(v.as_ptr() as u64 + 3, 1000);
        host_prefetch(0, 64);
        host_prefetch(u64::MAX - 10, 128);
        assert_eq!(v[0], 1);
    }
}
