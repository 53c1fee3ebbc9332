//! The lowered program: code nodes with the buffers they touch, barriers and scopes.

#[derive(Clone, Debug)]
pub(crate) enum Node {
    Code {
        text: String,
        reads: Vec<usize>,
        writes: Vec<usize>,
    },
    Barrier,
    Scope {
        head: String,
        body: Vec<Node>,
        tail: String,
        looped: bool,
    },
}

pub(crate) const GLOBAL_RES: usize = 1 << 20;
