//! The paged latent cache in host memory (FlashMLA / FlashInfer layout).

use crate::tensor::Element;
use crate::RuntimeError;

/// A paged token cache: `data [num_pages, page_size, row]`, a block table
/// `[batch, pages_per_seq]` of page ids and the current length of each sequence.
///
/// Token `t` of sequence `b` lives in page `block_table[b][t / page_size]`, at offset
/// `t % page_size`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostPagedCache<T> {
    data: Vec<T>,
    num_pages: usize,
    page_size: usize,
    row: usize,
    block_table: Vec<i32>,
    pages_per_seq: usize,
    seq_lens: Vec<i32>,
}

impl<T: Element> HostPagedCache<T> {
    /// An empty cache for `batch` sequences of up to `max_tokens` tokens each, pages assigned
    /// to sequences in order (sequence `b` owns pages `b * pages_per_seq ..`).
    pub fn new(
        batch: usize,
        max_tokens: usize,
        page_size: usize,
        row: usize,
    ) -> Result<Self, RuntimeError> {
        if page_size == 0 {
            return Err(RuntimeError::InvalidInput(
                "page size must be positive".into(),
            ));
        }
        if row == 0 || batch == 0 {
            return Err(RuntimeError::InvalidInput(
                "batch and row width must be positive".into(),
            ));
        }
        let pages_per_seq = max_tokens.div_ceil(page_size).max(1);
        let num_pages = batch * pages_per_seq;
        if num_pages > i32::MAX as usize {
            return Err(RuntimeError::InvalidInput(format!(
                "{num_pages} pages do not fit i32 page ids"
            )));
        }
        let block_table = (0..num_pages as i32).collect();
        Ok(HostPagedCache {
            data: vec![T::default(); num_pages * page_size * row],
            num_pages,
            page_size,
            row,
            block_table,
            pages_per_seq,
            seq_lens: vec![0; batch],
        })
    }

    /// A cache from its raw parts (e.g. read from a file), validated: `data` holds
    /// `num_pages * page_size * row` values, the block table `batch * pages_per_seq` page ids
    /// below `num_pages`, and every length fits the table.
    pub fn from_parts(
        data: Vec<T>,
        page_size: usize,
        row: usize,
        block_table: Vec<i32>,
        seq_lens: &[usize],
    ) -> Result<Self, RuntimeError> {
        if page_size == 0 || row == 0 {
            return Err(RuntimeError::InvalidInput(
                "page size and row width must be positive".into(),
            ));
        }
        if !data.len().is_multiple_of(page_size * row) {
            return Err(RuntimeError::InvalidInput(format!(
                "page pool of {} values is not a whole number of [{page_size}, {row}] pages",
                data.len()
            )));
        }
        let batch = seq_lens.len();
        if batch == 0 || !block_table.len().is_multiple_of(batch) {
            return Err(RuntimeError::InvalidInput(format!(
                "block table of {} entries for a batch of {batch}",
                block_table.len()
            )));
        }
        let num_pages = data.len() / (page_size * row);
        let mut c = HostPagedCache {
            data,
            num_pages,
            page_size,
            row,
            block_table: vec![0; block_table.len()],
            pages_per_seq: block_table.len() / batch,
            seq_lens: vec![0; batch],
        };
        c.set_block_table(block_table)?;
        c.set_seq_lens(seq_lens)?;
        Ok(c)
    }

    /// Replaces the block table (`[batch, pages_per_seq]`, page ids below `num_pages`).
    pub fn set_block_table(&mut self, table: Vec<i32>) -> Result<(), RuntimeError> {
        if table.len() != self.block_table.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "block table has {} entries, expected {}",
                table.len(),
                self.block_table.len()
            )));
        }
        if let Some(i) = tpla_codegen::launch::first_bad_page(&table, self.num_pages) {
            return Err(RuntimeError::InvalidInput(format!(
                "page id {} (entry {i}) outside 0..{}",
                table[i], self.num_pages
            )));
        }
        self.block_table = table;
        Ok(())
    }

    /// Sets the length of each sequence (at most `pages_per_seq * page_size`).
    pub fn set_seq_lens(&mut self, lens: &[usize]) -> Result<(), RuntimeError> {
        if lens.len() != self.seq_lens.len() {
            return Err(RuntimeError::InvalidInput(format!(
                "{} lengths for a batch of {}",
                lens.len(),
                self.seq_lens.len()
            )));
        }
        if let Some(&bad) = lens.iter().find(|&&l| l > self.capacity()) {
            return Err(RuntimeError::LengthPastCache {
                len: bad,
                capacity: self.capacity(),
            });
        }
        self.seq_lens = lens.iter().map(|&l| l as i32).collect();
        Ok(())
    }

    /// Writes token `t` of sequence `b` directly (host-side fill, e.g. from prefill). Does not
    /// change the sequence length.
    pub fn write_token(&mut self, b: usize, t: usize, values: &[T]) -> Result<(), RuntimeError> {
        let off = self.token_offset(b, t)?;
        if values.len() != self.row {
            return Err(RuntimeError::InvalidInput(format!(
                "row of {} values, expected {}",
                values.len(),
                self.row
            )));
        }
        self.data[off..off + self.row].copy_from_slice(values);
        Ok(())
    }

    /// Reads token `t` of sequence `b`.
    pub fn token(&self, b: usize, t: usize) -> Result<&[T], RuntimeError> {
        let off = self.token_offset(b, t)?;
        Ok(&self.data[off..off + self.row])
    }

    fn token_offset(&self, b: usize, t: usize) -> Result<usize, RuntimeError> {
        if b >= self.batch() || t >= self.capacity() {
            return Err(RuntimeError::LengthPastCache {
                len: t + 1,
                capacity: self.capacity(),
            });
        }
        let page = self.block_table[b * self.pages_per_seq + t / self.page_size] as usize;
        Ok((page * self.page_size + t % self.page_size) * self.row)
    }

    /// Tokens one sequence can hold.
    pub fn capacity(&self) -> usize {
        self.pages_per_seq * self.page_size
    }
    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.seq_lens.len()
    }
    /// Elements per token row.
    pub fn row(&self) -> usize {
        self.row
    }
    /// Tokens per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    /// Pages in the pool.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }
    /// Block-table entries per sequence.
    pub fn pages_per_seq(&self) -> usize {
        self.pages_per_seq
    }
    /// The block table, row-major `[batch, pages_per_seq]`.
    pub fn block_table(&self) -> &[i32] {
        &self.block_table
    }
    /// Current sequence lengths.
    pub fn seq_lens(&self) -> &[i32] {
        &self.seq_lens
    }
    /// The page pool.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// The page pool, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_outside_the_pool_is_named_by_its_entry_and_changes_nothing() {
        let data = vec![1.0f32; 4 * 2 * 3];
        let mut c = HostPagedCache::from_parts(data, 2, 3, vec![0, 1, 2, 3], &[3, 4]).unwrap();
        for (bad, entry) in [(4, 2), (-1, 1), (i32::MIN, 3)] {
            let mut table = vec![3, 2, 1, 0];
            table[entry] = bad;
            let e = c.set_block_table(table).unwrap_err().to_string();
            assert!(e.contains(&format!("page id {bad} (entry {entry})")), "{e}");
            assert_eq!(c.block_table, vec![0, 1, 2, 3]);
        }
        c.set_block_table(vec![3, 2, 1, 0]).unwrap();
        assert_eq!(c.block_table, vec![3, 2, 1, 0]);
    }
}
