//! A mutable view of a block of columns of a row-major matrix. Split by
//! columns, it lends disjoint blocks to threads that fill them at once: a
//! product over a few rows (one sentence) is split across the cores by its
//! output columns, and each task writes its columns in place instead of
//! into a buffer of its own that is then copied in (the copy, one thread
//! alone, and the zeroing of those buffers were a tenth of a sentence).

use std::marker::PhantomData;

/// Columns `0..width` of `rows` rows, `stride` floats apart, borrowed
/// mutably from a matrix. No two views made from one borrow share an
/// element, so views are `Send` as `&mut [f32]` is.
///
/// ```
/// use modalkit_candle::encoder::cpu::columns::ColumnsMut;
///
/// let mut matrix = vec![0f32; 2 * 4]; // 2 rows of 4 columns
/// let (mut left, mut right) = ColumnsMut::new(&mut matrix, 4).split_at(1);
/// left.row(1)[0] = 1.0;
/// right.row(0)[2] = 2.0;
/// assert_eq!(matrix, [0., 0., 0., 2., 1., 0., 0., 0.]);
/// ```
pub struct ColumnsMut<'a> {
    /// The view's first element (row 0, column 0).
    start: *mut f32,
    rows: usize,
    width: usize,
    stride: usize,
    matrix: PhantomData<&'a mut [f32]>,
}

// SAFETY: a view is an exclusive borrow of its elements, which no other view
// of the same matrix includes (`split_at` and the sub-views keep them
// disjoint), so moving it to another thread is as safe as moving a
// `&mut [f32]`.
#[allow(unsafe_code)]
unsafe impl Send for ColumnsMut<'_> {}

impl<'a> ColumnsMut<'a> {
    /// The whole of `matrix`, rows of `width` columns. Panics if its length
    /// is not a whole number of rows.
    pub fn new(matrix: &'a mut [f32], width: usize) -> Self {
        let rows = matrix.len().checked_div(width).unwrap_or(0);
        assert_eq!(rows * width, matrix.len(), "a matrix of rows of {width}");
        Self {
            start: matrix.as_mut_ptr(),
            rows,
            width,
            stride: width,
            matrix: PhantomData,
        }
    }

    /// Rows in the view.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns in the view.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The view's row `row` (its `width` columns). Panics if `row` is not
    /// a row of the view.
    #[allow(unsafe_code)]
    pub fn row(&mut self, row: usize) -> &mut [f32] {
        assert!(row < self.rows, "row {row} of a view of {}", self.rows);
        // SAFETY: row < rows, and every row of the view, `width` floats from
        // `start + row · stride`, lies inside the matrix borrowed for 'a (true
        // of `new`'s view, and kept by every narrower view made from it);
        // `&mut self` makes the returned slice the only access to them.
        unsafe { std::slice::from_raw_parts_mut(self.start.add(row * self.stride), self.width) }
    }

    /// Splits the view into columns `..column` and `column..`. Panics if
    /// `column` is past the view's width.
    pub fn split_at(self, column: usize) -> (Self, Self) {
        assert!(column <= self.width, "column {column} of {}", self.width);
        let right = Self {
            // In bounds or one past the view's first row; never read unless
            // the right view has rows and columns.
            start: self.start.wrapping_add(column),
            width: self.width - column,
            ..self
        };
        let left = Self {
            width: column,
            ..self
        };
        (left, right)
    }

    /// Columns `first..first + count` of rows `row..`, borrowed from this
    /// view. Panics if they are not all in it.
    pub fn block(&mut self, row: usize, first: usize, count: usize) -> ColumnsMut<'_> {
        assert!(
            row <= self.rows && first + count <= self.width,
            "rows {row}.. and columns {first}..{} of a {}×{} view",
            first + count,
            self.rows,
            self.width
        );
        ColumnsMut {
            start: self.start.wrapping_add(row * self.stride + first),
            rows: self.rows - row,
            width: count,
            stride: self.stride,
            matrix: PhantomData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_write_where_they_point_and_nowhere_else() {
        let mut matrix = vec![0f32; 3 * 5];
        let whole = ColumnsMut::new(&mut matrix, 5);
        let (mut left, rest) = whole.split_at(2);
        let (mut middle, mut right) = rest.split_at(2);
        assert_eq!((left.width(), middle.width(), right.width()), (2, 2, 1));
        for row in 0..3 {
            left.row(row).fill(1.0);
            middle.row(row).fill(2.0);
            right.row(row).fill(3.0);
        }
        middle.block(1, 1, 1).row(1)[0] = 9.0;
        assert_eq!(
            matrix,
            [
                1., 1., 2., 2., 3., //
                1., 1., 2., 2., 3., //
                1., 1., 2., 9., 3.,
            ]
        );
    }

    #[test]
    #[should_panic(expected = "row 2 of a view of 2")]
    fn a_row_past_the_view_panics() {
        let mut matrix = vec![0f32; 4];
        ColumnsMut::new(&mut matrix, 2).row(2);
    }

    #[test]
    #[should_panic(expected = "columns 1..3 of a 2×2 view")]
    fn a_block_past_the_view_panics() {
        let mut matrix = vec![0f32; 4];
        ColumnsMut::new(&mut matrix, 2).block(0, 1, 2);
    }

    #[test]
    fn empty_views_split_and_hand_out_nothing() {
        let mut matrix: Vec<f32> = Vec::new();
        let (left, right) = ColumnsMut::new(&mut matrix, 4).split_at(3);
        assert_eq!((left.rows(), left.width(), right.width()), (0, 3, 1));
    }
}
