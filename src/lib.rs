//! tpla
