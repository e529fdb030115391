//! Matrix views over plain `f32` slices: the operands every kernel of this layer takes.
//!
//! A view's fields are private and every constructor checks that the view fits in its slice,
//! so a view that exists is in bounds: that one check is what the kernels' raw-pointer code
//! relies on, and safe code cannot build a view that breaks it (there is no struct literal to
//! write outside this module).

/// Panics unless a `rows x cols` view with strides `rs` (between rows) and `cs` (between
/// columns) fits in `len` elements.
fn check_view(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    let last = (rows.max(1) - 1).checked_mul(rs).and_then(|r| {
        (cols.max(1) - 1)
            .checked_mul(cs)
            .and_then(|c| r.checked_add(c))
    });
    assert!(
        rows == 0 || cols == 0 || last.is_some_and(|last| last < len),
        "matrix {rows}x{cols} (strides {rs}, {cs}) needs more than {len} elements"
    );
}

/// [`check_view`] for a row-major view, whose rows must not overlap (a written view's rows
/// would alias each other).
fn check_rows(len: usize, rows: usize, cols: usize, stride: usize) {
    assert!(
        cols <= stride || rows <= 1,
        "row stride {stride} < cols {cols}"
    );
    check_view(len, rows, cols, stride, 1);
}

/// A read-only matrix view: element `(r, c)` at `data[r * stride + c * col_stride]`;
/// row-major (`col_stride` 1) unless it is the transpose of one ([`MatRef::t`]). Always in
/// bounds of `data` (checked when made).
///
/// A view cannot be written as a struct literal, so no safe code can claim more rows than its
/// slice holds and hand that to a kernel:
///
/// ```compile_fail,E0451
/// let data = [0f32; 4];
/// let v = bertbench::compute::MatRef { data: &data, rows: 1000, cols: 1000, stride: 1000, col_stride: 1 };
/// ```
///
/// and the checked constructor refuses it:
///
/// ```should_panic
/// let data = [0f32; 4];
/// let v = bertbench::compute::MatRef::new(&data, 1000, 1000, 1000);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major view, rows `stride` apart. Panics unless it fits in `data` and
    /// `cols <= stride`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, stride: usize) -> Self {
        check_rows(data.len(), rows, cols, stride);
        Self {
            data,
            rows,
            cols,
            stride,
            col_stride: 1,
        }
    }

    /// The transpose, as a view of the same data.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            stride: self.col_stride,
            col_stride: self.stride,
            ..self
        }
    }

    /// Columns `start .. start + cols` of every row, without copying.
    pub fn columns(&self, start: usize, cols: usize) -> MatRef<'a> {
        assert!(
            start.checked_add(cols).is_some_and(|end| end <= self.cols),
            "columns {start}..+{cols} of {}",
            self.cols
        );
        if self.rows == 0 || cols == 0 {
            return MatRef {
                data: &[],
                cols,
                ..*self
            };
        }
        MatRef {
            data: &self.data[start * self.col_stride..],
            cols,
            ..*self
        }
    }

    /// Rows `start .. start + rows`, without copying.
    pub fn rows_range(&self, start: usize, rows: usize) -> MatRef<'a> {
        assert!(
            start.checked_add(rows).is_some_and(|end| end <= self.rows),
            "rows {start}..+{rows} of {}",
            self.rows
        );
        if rows == 0 || self.cols == 0 {
            return MatRef {
                data: &[],
                rows,
                ..*self
            };
        }
        MatRef {
            data: &self.data[start * self.stride..],
            rows,
            ..*self
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Elements between the starts of consecutive rows.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Elements between consecutive columns (1 unless transposed).
    pub fn col_stride(&self) -> usize {
        self.col_stride
    }

    /// The slice the view starts at (element `(0, 0)` first).
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    pub fn is_row_major(&self) -> bool {
        self.col_stride == 1
    }
}

/// A mutable row-major matrix view; see [`MatRef`]. Always in bounds of its data, rows not
/// overlapping (checked when made).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<'a> MatMut<'a> {
    /// A row-major view, rows `stride` apart. Panics unless it fits in `data` and
    /// `cols <= stride`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, stride: usize) -> Self {
        check_rows(data.len(), rows, cols, stride);
        Self {
            data,
            rows,
            cols,
            stride,
        }
    }

    /// Columns `start .. start + cols` of every row.
    pub fn columns(&mut self, start: usize, cols: usize) -> MatMut<'_> {
        assert!(
            start.checked_add(cols).is_some_and(|end| end <= self.cols),
            "columns {start}..+{cols} of {}",
            self.cols
        );
        let data = if self.rows == 0 || cols == 0 {
            &mut []
        } else {
            &mut self.data[start..]
        };
        MatMut {
            data,
            rows: self.rows,
            cols,
            stride: self.stride,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row `r`'s `cols` values.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        &mut self.data[r * self.stride..][..self.cols]
    }

    /// Applies `f` to each row's `cols` values (one call when the rows are contiguous).
    pub fn for_each_row(&mut self, mut f: impl FnMut(&mut [f32])) {
        if self.stride == self.cols {
            f(&mut self.data[..self.rows * self.cols]);
        } else {
            for r in 0..self.rows {
                f(self.row_mut(r));
            }
        }
    }

    /// Pointer to element `(0, 0)`, for kernels that write through raw pointers; the view's
    /// bounds hold for every element it names.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut f32 {
        self.data.as_mut_ptr()
    }
}

/// An output pointer handed to parallel tasks that each write their own disjoint block of it
/// (attention heads, column ranges of a product).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only ever used for tasks that write disjoint elements, each through its own block.
unsafe impl Send for SendPtr {}
// SAFETY: as for Send: shared only among tasks that write disjoint elements.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_checked_when_made() {
        let data = vec![0f32; 12];
        let v = MatRef::new(&data, 3, 4, 4);
        assert_eq!((v.rows(), v.cols(), v.stride()), (3, 4, 4));
        let t = v.t();
        assert_eq!(
            (t.rows(), t.cols(), t.stride(), t.col_stride()),
            (4, 3, 1, 4)
        );
        assert_eq!(v.columns(1, 3).cols(), 3);
        assert_eq!(v.rows_range(1, 2).data().len(), 8);
        let refused: [fn(); 8] = [
            || _ = MatRef::new(&[0f32; 12], 4, 4, 4), // 16 elements needed
            || _ = MatRef::new(&[0f32; 12], 2, 5, 4), // rows overlap
            || _ = MatRef::new(&[0f32; 12], 2, 2, usize::MAX), // overflow
            || _ = MatRef::new(&[0f32; 12], 3, 4, 4).columns(2, 3),
            || _ = MatRef::new(&[0f32; 12], 3, 4, 4).columns(usize::MAX, 2),
            || _ = MatRef::new(&[0f32; 12], 3, 4, 4).rows_range(2, 2),
            || _ = MatMut::new(&mut [0f32; 12], 4, 3, 3).columns(1, 3),
            || _ = MatMut::new(&mut [0f32; 12], 2, 6, 7),
        ];
        for (i, bad) in refused.into_iter().enumerate() {
            assert!(std::panic::catch_unwind(bad).is_err(), "view {i} was made");
        }
        // Empty views are fine anywhere.
        let e = MatRef::new(&[], 0, 5, 5);
        assert_eq!(e.columns(2, 3).rows(), 0);
    }

    #[test]
    fn mutable_views_write_only_their_elements() {
        let mut data = vec![0f32; 4 * 6];
        let mut v = MatMut::new(&mut data, 4, 6, 6);
        let mut c = v.columns(2, 3);
        c.for_each_row(|row| row.fill(1.0));
        c.row_mut(3)[2] = 2.0;
        for (i, x) in data.iter().enumerate() {
            let col = i % 6;
            let want = match (i / 6, col) {
                (3, 4) => 2.0,
                (_, 2..=4) => 1.0,
                _ => 0.0,
            };
            assert_eq!(*x, want, "element {i}");
        }
    }
}
