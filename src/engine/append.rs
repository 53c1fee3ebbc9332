//! [`EnginePlan::append`]: new token rows into the engine's pool at its slots.

use tpla_runtime::half::bf16;
use tpla_runtime::view::{KvPool, TensorView, ViewExecutor};
use tpla_runtime::{KernelArg, RuntimeError};

use super::{tensor, EnginePlan, Space};
use tpla_kernels::append_rows;

impl<X: ViewExecutor> EnginePlan<X> {
    /// Writes `rows` (`[n, lat + rope]` bf16) into the pool at `slots` (`[n]` i32, distinct,
    /// each `page · page_size + offset`). `n` may differ per call up to `max_append`; sequences
    /// grow by whatever count of their tokens are in the mapping. On the host a bad slot (out
    /// of the pool, repeated) is an error and nothing is written.
    pub fn append(
        &self,
        exec: &X,
        pool: &mut KvPool<'_, bf16, Space<X>>,
        slots: &TensorView<'_, i32, Space<X>>,
        rows: &TensorView<'_, bf16, Space<X>>,
    ) -> Result<(), RuntimeError> {
        let row = self.caps.lat + self.caps.rope;
        let n = match slots.shape() {
            [n] => *n,
            s => {
                return Err(RuntimeError::InvalidInput(format!(
                    "slot mapping must be [n], got {s:?}"
                )))
            }
        };
        if rows.shape() != [n, row] {
            return Err(RuntimeError::InvalidInput(format!(
                "rows must be [{n}, {row}], got {:?}",
                rows.shape()
            )));
        }
        if n > self.caps.max_append {
            return Err(RuntimeError::InvalidInput(format!(
                "{n} rows in one append, the plan allows {}",
                self.caps.max_append
            )));
        }
        self.check_pool(pool)?;
        if n == 0 {
            return Ok(());
        }
        let ones = self.ones_view(n)?;
        let cache = self.cache_format(pool.slot_rows(slots, &ones)?)?;
        // The kernel takes `[batch, new_tokens, ROW]`: n one-token sequences.
        let shape = [n, 1, row];
        let rows_arg = KernelArg::Tensor(tensor(rows.arg())?.prefix(&shape)?);
        exec.launch(&append_rows, &self.append, &[rows_arg, cache])
    }
}
