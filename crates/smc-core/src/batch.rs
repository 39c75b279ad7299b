//! Dense per-particle tables: next-token log-probability rows, token prefixes, hidden states.

/// A row-major `rows x cols` table of `f64`, one row per particle (e.g. log p0(v | s_{<t}) for
/// every vocabulary token v).
#[derive(Debug, Clone, PartialEq)]
pub struct LogTable {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl LogTable {
    /// Wraps row-major data; `None` if `data.len() != rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f64>) -> Option<Self> {
        (data.len() == rows * cols).then_some(Self { rows, cols, data })
    }

    /// A table filled with `value`.
    pub fn filled(rows: usize, cols: usize, value: f64) -> Self {
        Self {
            rows,
            cols,
            data: vec![value; rows * cols],
        }
    }

    /// Number of rows (particles).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (vocabulary size).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `k`.
    pub fn row(&self, k: usize) -> &[f64] {
        &self.data[k * self.cols..(k + 1) * self.cols]
    }

    /// Row `k`, mutable.
    pub fn row_mut(&mut self, k: usize) -> &mut [f64] {
        &mut self.data[k * self.cols..(k + 1) * self.cols]
    }

    /// The row-major data.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// Consumes the table into its row-major data.
    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }
}

/// Hidden states of the base model, one row of `dim` floats per particle: the input of
/// twist heads. Backends copy them out of their tensors (K x d floats, negligible next to a step).
#[derive(Debug, Clone, PartialEq)]
pub struct HiddenStates {
    /// Number of particles.
    pub rows: usize,
    /// Hidden size d.
    pub dim: usize,
    /// Row-major `rows x dim` values.
    pub data: Vec<f32>,
}

impl HiddenStates {
    /// Row `k`.
    pub fn row(&self, k: usize) -> &[f32] {
        &self.data[k * self.dim..(k + 1) * self.dim]
    }
}

/// The tokens of K particles, `len` tokens each, stored row-major with a fixed capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBuffer {
    num_particles: usize,
    capacity: usize,
    len: usize,
    data: Vec<u32>,
}

impl TokenBuffer {
    /// An empty buffer for `num_particles` sequences of up to `capacity` tokens.
    pub fn new(num_particles: usize, capacity: usize) -> Self {
        Self {
            num_particles,
            capacity,
            len: 0,
            data: vec![0; num_particles * capacity],
        }
    }

    /// A buffer holding the given equal-length sequences.
    ///
    /// # Panics
    /// If the sequences differ in length (a programming error, not user input).
    pub fn from_rows(rows: &[Vec<u32>]) -> Self {
        let len = rows.first().map_or(0, Vec::len);
        let mut buf = Self::new(rows.len(), len);
        for (k, row) in rows.iter().enumerate() {
            assert_eq!(row.len(), len, "TokenBuffer::from_rows: ragged rows");
            buf.data[k * len..(k + 1) * len].copy_from_slice(row);
        }
        buf.len = len;
        buf
    }

    /// Number of particles K.
    pub fn num_particles(&self) -> usize {
        self.num_particles
    }

    /// Tokens per particle so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no token has been pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tokens of particle `k`.
    pub fn row(&self, k: usize) -> &[u32] {
        &self.data[k * self.capacity..k * self.capacity + self.len]
    }

    /// Iterates over the particles' token sequences.
    pub fn iter(&self) -> impl Iterator<Item = &[u32]> {
        (0..self.num_particles).map(move |k| self.row(k))
    }

    /// Appends one token to every particle.
    ///
    /// # Panics
    /// If `tokens.len() != K` or the buffer is full.
    pub fn push(&mut self, tokens: &[u32]) {
        assert_eq!(tokens.len(), self.num_particles);
        assert!(self.len < self.capacity, "TokenBuffer is full");
        for (k, &tok) in tokens.iter().enumerate() {
            self.data[k * self.capacity + self.len] = tok;
        }
        self.len += 1;
    }

    /// Replaces the particles by their ancestors: row k becomes old row `ancestors[k]`.
    /// Copies only rows whose ancestor differs from themselves.
    pub fn gather(&mut self, ancestors: &[usize]) {
        assert_eq!(ancestors.len(), self.num_particles);
        let old = self.data.clone();
        for (k, &a) in ancestors.iter().enumerate() {
            if a != k {
                let (dst, src) = (k * self.capacity, a * self.capacity);
                self.data[dst..dst + self.len].copy_from_slice(&old[src..src + self.len]);
            }
        }
    }

    /// The sequences as owned vectors.
    pub fn to_rows(&self) -> Vec<Vec<u32>> {
        self.iter().map(<[u32]>::to_vec).collect()
    }
}

/// Gathers a per-particle vector by ancestor indices.
pub fn gather<T: Copy>(values: &mut [T], ancestors: &[usize]) {
    let old: Vec<T> = values.to_vec();
    for (v, &a) in values.iter_mut().zip(ancestors) {
        *v = old[a];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_buffer_push_and_gather_follow_ancestors() {
        let mut buf = TokenBuffer::new(3, 4);
        buf.push(&[1, 2, 3]);
        buf.push(&[4, 5, 6]);
        buf.gather(&[2, 2, 0]);
        assert_eq!(buf.to_rows(), vec![vec![3, 6], vec![3, 6], vec![1, 4]]);
        buf.push(&[7, 8, 9]);
        assert_eq!(buf.row(1), &[3, 6, 8]);
    }

    #[test]
    fn log_table_rejects_wrong_length() {
        assert!(LogTable::from_vec(2, 3, vec![0.0; 5]).is_none());
        let t = LogTable::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(t.row(1), &[3.0, 4.0]);
    }
}
