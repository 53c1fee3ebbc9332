//! Synchronisation pass: inserts `__syncthreads()` between conflicting shared-memory accesses.
//!
//! A paged loop's ring is not a tracked resource here: its ordering is the loop's own. Without
//! warp specialisation the loop opens every block with an explicit barrier node; under
//! `PRODUCER = 1` the full / empty mbarriers of `warpspec.rs` order the streamed tiles and the
//! loop emits one barrier before it (publishing what the consumers wrote earlier), so this pass
//! only adds barriers for the consumers' other buffers (printed as the consumers' named barrier).

use std::collections::BTreeSet;

use crate::cuda::node::*;

#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Hazards {
    pub(crate) w: BTreeSet<usize>,
    pub(crate) r: BTreeSet<usize>,
}

impl Hazards {
    pub(crate) fn union(&self, o: &Hazards) -> Hazards {
        Hazards {
            w: self.w.union(&o.w).copied().collect(),
            r: self.r.union(&o.r).copied().collect(),
        }
    }
}

/// Bit position of the thread-affinity tag in a hazard resource id (see [`conflict`]).
pub(crate) const AFFINITY_SHIFT: u32 = 32;

/// A buffer access every thread makes only to the elements it owns under element-to-thread
/// mapping `tag` (> 0): the `for (i_ = tid; i_ < n; i_ += threads)` loop over one shape.
pub(crate) fn with_affinity(buf: usize, tag: usize) -> usize {
    buf | (tag << AFFINITY_SHIFT)
}

/// Whether two accesses to hazard resources need a barrier between them: the same resource,
/// unless both carry the same affinity tag (then each thread only meets its own earlier writes).
pub(crate) fn conflict(a: usize, b: usize) -> bool {
    let mask = (1usize << AFFINITY_SHIFT) - 1;
    let (ta, tb) = (a >> AFFINITY_SHIFT, b >> AFFINITY_SHIFT);
    (a & mask) == (b & mask) && !(ta != 0 && ta == tb)
}

pub(crate) fn insert_barriers(nodes: &[Node], st: &mut Hazards) -> Vec<Node> {
    let mut out = Vec::new();
    for n in nodes {
        match n {
            Node::Code { reads, writes, .. } => {
                let hits = |set: &BTreeSet<usize>, x: usize| set.iter().any(|&y| conflict(x, y));
                let hazard = reads.iter().any(|&x| hits(&st.w, x))
                    || writes.iter().any(|&x| hits(&st.w, x) || hits(&st.r, x));
                if hazard {
                    out.push(Node::Barrier);
                    *st = Hazards::default();
                }
                st.r.extend(reads.iter().copied());
                st.w.extend(writes.iter().copied());
                out.push(n.clone());
            }
            Node::Barrier => {
                *st = Hazards::default();
                out.push(Node::Barrier);
            }
            Node::Scope {
                head,
                body,
                tail,
                looped,
            } => {
                if !*looped {
                    let b = insert_barriers(body, st);
                    out.push(Node::Scope {
                        head: head.clone(),
                        body: b,
                        tail: tail.clone(),
                        looped: false,
                    });
                    continue;
                }
                let entry = st.clone();
                let mut init = entry.clone();
                let mut rounds = 0;
                loop {
                    let mut s = init.clone();
                    let b = insert_barriers(body, &mut s);
                    let next = init.union(&s);
                    rounds += 1;
                    if next == init || rounds > 8 {
                        *st = entry.union(&s);
                        out.push(Node::Scope {
                            head: head.clone(),
                            body: b,
                            tail: tail.clone(),
                            looped: true,
                        });
                        break;
                    }
                    init = next;
                }
            }
        }
    }
    out
}
