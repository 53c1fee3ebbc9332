//! Tests of the latent decoder's host-side helpers (`decoder.rs`).

use super::*;

#[test]
fn shard_rows_picks_the_latent_slice_and_the_rope() {
    // 2 rows of lat 4 + rope 1: shard 1 of width 2 is columns 2..4 plus column 4.
    let data: Vec<i32> = (0..10).collect();
    assert_eq!(
        shard_rows(&data, 2, 4, 1, 2, 1).unwrap(),
        [2, 3, 4, 7, 8, 9]
    );
}

#[test]
fn shard_rows_rejects_wrong_sizes_instead_of_panicking() {
    let data: Vec<i32> = (0..10).collect();
    for (rows, lat, w, i) in [
        (3, 4, 2, 0),
        (2, 4, 2, 2),
        (2, 4, 3, 1),
        (2, 4, usize::MAX, 1),
    ] {
        let e = shard_rows(&data, rows, lat, 1, w, i).unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidInput(_)), "{e}");
    }
}

#[test]
fn concat_shards_interleaves_rows_and_rejects_short_parts() {
    let parts = vec![vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0, 8.0]];
    assert_eq!(
        concat_shards(&parts, 2, 2).unwrap(),
        [1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 7.0, 8.0]
    );
    let short = vec![vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0]];
    let e = concat_shards(&short, 2, 2).unwrap_err();
    assert!(e.to_string().contains("shard output 1"), "{e}");
}
