//! The smallest engine-style program: the engine owns the KV page pool, the block table, the
//! lengths and the slot mapping; tpla appends through the slots and decodes over views of that
//! memory, returning the output and its log-sum-exp. (On a GPU the same calls take device-pointer
//! views made with the `unsafe` `from_device` constructors and run on the engine's stream via
//! `CudaExecutor::with_stream`.)
//!
//! Run: `cargo run --release --example decode_api`.

use rand::{Rng, SeedableRng};
use tpla::engine::{Capacities, EnginePlan, KvDtype};
use tpla_runtime::half::bf16;
use tpla_runtime::view::{slot_of, KvPool, TensorView, TensorViewMut};
use tpla_runtime::CpuExecutor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exec = CpuExecutor::new(0)?;
    let caps = Capacities {
        max_batch: 2,
        heads: 16,
        lat: 512,
        rope: 64,
        page_size: 64,
        max_pages_per_seq: 16,
        max_append: 1024,
        kv_dtype: KvDtype::Bf16,
    };
    let row = caps.lat + caps.rope;
    let mut plan = EnginePlan::new(&exec, caps.clone(), 0.1352, 0)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut random = |n: usize| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.gen_range(-1.0..1.0)))
            .collect()
    };

    // The engine's memory: 32 pages, sequence 0 on pages 7, 3, 9; sequence 1 on pages 12, 0.
    let mut pool = vec![bf16::ZERO; 32 * caps.page_size * row];
    let mut table = vec![0i32; 2 * caps.max_pages_per_seq];
    table[..3].copy_from_slice(&[7, 3, 9]);
    table[16..18].copy_from_slice(&[12, 0]);
    let mut lens = [0i32; 2];

    // Prefill: 150 and 90 tokens; the engine maps each token to its slot.
    for (b, n) in [(0usize, 150usize), (1, 90)] {
        let pages = &table[b * 16..(b + 1) * 16];
        let slots = (0..n)
            .map(|t| slot_of(pages, caps.page_size, t))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = random(n * row);
        plan.append(
            &exec,
            &mut KvPool::new(&mut pool, caps.page_size, row)?,
            &TensorView::new(&slots, &[n])?,
            &TensorView::new(&rows, &[n, row])?,
        )?;
        lens[b] += n as i32;
    }

    // One decode step with an absorbed query per sequence.
    let q = random(2 * caps.heads * row);
    let mut out = vec![f32::NAN; 2 * caps.heads * caps.lat];
    let mut lse = vec![f32::NAN; 2 * caps.heads];
    plan.decode(
        &exec,
        &KvPool::new(&mut pool, caps.page_size, row)?,
        &TensorView::new(&table, &[2, 16])?,
        &TensorView::new(&lens, &[2])?,
        &TensorView::new(&q, &[2, caps.heads, row])?,
        (
            &mut TensorViewMut::new(&mut out, &[2, caps.heads, caps.lat])?,
            &mut TensorViewMut::new(&mut lse, &[2, caps.heads])?,
        ),
    )?;
    println!(
        "lengths {lens:?}, {} splits; lse of sequence 0, head 0: {:.4}; out[0..4] = {:?}",
        plan.splits(),
        lse[0],
        &out[..4]
    );
    Ok(())
}
