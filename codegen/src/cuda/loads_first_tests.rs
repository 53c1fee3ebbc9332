//! Tests of the loop-load rewrite (`loads_first.rs`).
use super::*;
use crate::ir::{BinaryOp, Operand};

fn load(dst: TileId, param: ParamId, at: Index) -> Stmt {
    Stmt::Assign {
        dst,
        op: TileOp::Load {
            param,
            index: vec![
                Slice::At(at),
                Slice::Span {
                    start: Index::Const(0),
                    len: 8,
                },
            ],
        },
    }
}

fn add(dst: TileId, a: TileId, b: TileId) -> Stmt {
    Stmt::Assign {
        dst,
        op: TileOp::Binary(BinaryOp::Add, Operand::Tile(a), Operand::Tile(b)),
    }
}

fn dsts(body: &[Stmt]) -> Vec<TileId> {
    body.iter()
        .map(|s| match s {
            Stmt::Assign { dst, .. } => *dst,
            _ => usize::MAX,
        })
        .collect()
}

/// The combine's shape: `w = f(load lse)`, `acc = acc + load(part) · w`: the second load
/// goes up beside the first.
#[test]
fn a_load_moves_above_arithmetic_it_does_not_read() {
    let mut body = vec![
        load(1, 0, Index::Var(0)),
        add(2, 1, 1),
        add(3, 3, 2),
        load(4, 1, Index::Var(0)),
        add(5, 5, 4),
    ];
    assert!(loads_up(&mut body));
    assert_eq!(dsts(&body), vec![1, 4, 2, 3, 5]);
    // A second run moves nothing.
    assert!(!loads_up(&mut body));
}

/// A load stays behind what reads or assigns its tile (the previous iteration's value), a
/// `let` its index reads, and a store to the tensor it reads.
#[test]
fn a_load_stays_behind_what_it_depends_on() {
    let mut body = vec![add(2, 4, 4), load(4, 1, Index::Var(0))];
    assert!(!loads_up(&mut body));
    let mut body = vec![
        load(1, 0, Index::Var(0)),
        Stmt::Let {
            dst: 3,
            value: Index::Const(2),
        },
        add(2, 1, 1),
        load(4, 1, Index::Var(3)),
    ];
    assert!(loads_up(&mut body));
    assert_eq!(dsts(&body), vec![1, usize::MAX, 4, 2]);
    let mut body = vec![
        Stmt::Store {
            param: 1,
            index: vec![Slice::At(Index::Const(0))],
            src: 7,
        },
        add(2, 7, 7),
        load(4, 1, Index::Var(0)),
    ];
    assert!(loads_up(&mut body));
    assert_eq!(dsts(&body), vec![usize::MAX, 4, 2]);
}

/// Only `for` bodies are rewritten: a kernel whose loads sit at the top level is returned
/// unchanged (`None`).
#[test]
fn the_top_level_is_left_as_written() {
    let k = Kernel {
        name: "k".into(),
        config: vec![],
        params: vec![],
        dims: vec![],
        grid: [Index::Const(1), Index::Const(1), Index::Const(1)],
        tiles: vec![tile(&[4]); 8],
        scalars: vec!["s".into()],
        body: vec![add(2, 1, 1), load(4, 1, Index::Const(0))],
    };
    assert!(loads_first(&k).is_none());
    let mut k2 = k.clone();
    k2.body = vec![Stmt::For {
        var: 0,
        start: Index::Const(0),
        end: Index::Const(4),
        body: k.body.clone(),
    }];
    let r = loads_first(&k2).expect("the for body is rewritten");
    let Stmt::For { body, .. } = &r.body[0] else {
        panic!("a for loop")
    };
    assert_eq!(dsts(body), vec![4, 2]);
}

fn tile(shape: &[usize]) -> TileInfo {
    TileInfo {
        name: "t".into(),
        dtype: crate::ir::DType::F32,
        shape: shape.to_vec(),
    }
}

fn kernel(tiles: Vec<TileInfo>, body: Vec<Stmt>) -> Kernel {
    Kernel {
        name: "k".into(),
        config: vec![],
        params: vec![],
        dims: vec![],
        grid: [Index::Const(1), Index::Const(1), Index::Const(1)],
        tiles,
        scalars: vec!["s".into(), "x".into()],
        body: vec![Stmt::For {
            var: 0,
            start: Index::Const(0),
            end: Index::Const(3),
            body,
        }],
    }
}

/// The combine's second loop: both leading loads get a `next` tile, loaded before the loop
/// for iteration 0 and in the body for iteration `s + 1` right after the body has copied
/// its own values out.
#[test]
fn a_loop_s_leading_loads_are_prefetched_one_iteration_ahead() {
    let tiles = vec![tile(&[16]); 4]
        .into_iter()
        .chain([tile(&[16, 128]), tile(&[16, 128])])
        .collect();
    let body = vec![
        load(1, 0, Index::Var(0)),
        add(2, 1, 1),
        add(3, 3, 2),
        load(4, 1, Index::Var(0)),
        add(5, 5, 4),
    ];
    let k = loads_first(&kernel(tiles, body)).expect("rewritten");
    assert_eq!(k.tiles.len(), 8, "two next tiles");
    assert_eq!(dsts(&k.body[..2]), vec![6, 7], "the prologue loads");
    let Stmt::For { body, .. } = &k.body[2] else {
        panic!("the loop")
    };
    assert_eq!(dsts(body), vec![1, 4, 6, 7, 2, 3, 5]);
    assert!(matches!(
        body[0],
        Stmt::Assign {
            op: TileOp::Cast(6),
            ..
        }
    ));
    assert!(matches!(
        body[1],
        Stmt::Assign {
            op: TileOp::Cast(7),
            ..
        }
    ));
    assert!(matches!(
        body[2],
        Stmt::Assign {
            op: TileOp::Load { param: 0, .. },
            ..
        }
    ));
}

/// Left alone: a loop that stores, a load whose index reads a scalar the body assigns or
/// does not read the loop variable, and a short reduction (unrolled instead).
#[test]
fn loops_that_cannot_be_prefetched_are_left_alone() {
    let big = || vec![tile(&[16, 128]); 8];
    let store = Stmt::Store {
        param: 2,
        index: vec![Slice::At(Index::Const(0))],
        src: 2,
    };
    let set = |dst: ScalarId| Stmt::Let {
        dst,
        value: Index::Const(1),
    };
    let plain = || vec![load(1, 0, Index::Var(0)), add(2, 1, 1)];
    for body in [
        vec![load(1, 0, Index::Var(0)), add(2, 1, 1), store],
        vec![load(1, 0, Index::Var(1)), add(2, 1, 1), set(1)],
        vec![load(1, 0, Index::Const(2)), add(2, 1, 1)],
        vec![load(1, 0, Index::Var(0)), add(2, 1, 1), set(0)],
    ] {
        let k = kernel(big(), body);
        assert!(loads_first(&k).is_none(), "{:?}", k.body);
    }
    // The same loop prefetches, but not where its end reads memory or a scalar the body sets.
    assert!(loads_first(&kernel(big(), plain())).is_some());
    for (end, extra) in [
        (
            Index::Load {
                param: 3,
                index: vec![Index::Const(0)],
            },
            None,
        ),
        (Index::Var(1), Some(set(1))),
    ] {
        let mut k = kernel(big(), plain());
        if let Stmt::For { end: e, body, .. } = &mut k.body[0] {
            *e = end;
            body.extend(extra);
        }
        assert!(loads_first(&k).is_none(), "{:?}", k.body);
    }
    let small = kernel(
        vec![tile(&[16]); 4],
        vec![load(1, 0, Index::Var(0)), add(2, 2, 1)],
    );
    assert!(loads_first(&small).is_none());
}

/// The prefetch index is the iteration's own before the loop's end and past every extent
/// after it (an empty loop's prologue included).
#[test]
fn the_prefetch_index_leaves_the_tensor_past_the_loop_s_end() {
    let at = |x: i64, end: i64| guarded(Index::Const(x), &Index::Const(end)).eval_dims(&[]);
    assert_eq!(at(0, 3), Some(0));
    assert_eq!(at(2, 3), Some(2));
    assert_eq!(at(3, 3), Some(3 + OUT_OF_BOUNDS));
    assert_eq!(at(0, 0), Some(OUT_OF_BOUNDS));
}
