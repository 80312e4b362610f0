//! Linear layers against weights packed once at load.
//!
//! A weight matrix is stored as panels of [`PANEL`] output columns, each
//! panel two contiguous halves of `inputs × HALF`, so the inner loop
//! streams a panel (AVX-512: both halves side by side) or half a panel
//! (AVX2) sequentially while a tile of up to 12 activation rows (read in
//! place, one stream per row) is broadcast against it: with AVX-512,
//! 12 × 32 accumulators live in 24 of the 32 vector registers; with AVX2,
//! 6 × 16 in 12 of the 16, six rows and half a panel at a time. (With whole
//! 32-wide rows the AVX2 pass over one half read every other cache line,
//! which the prefetchers follow poorly: a lone sentence, whose weights
//! stream from L3, was half as fast as on AVX-512.) Accumulators start at
//! the bias and get the activation (GELU) applied before they are stored.
//! Nothing is packed per call.
//!
//! Work is split across rayon's pool by rows when there are many (a batch)
//! and by panels when there are few (one sentence), so both cores stay busy.

use rayon::prelude::*;

use std::cell::RefCell;

use super::columns::ColumnsMut;
use super::ops::gelu_with;
use super::precision::{Precision, round_to_bf16, to_bf16, to_bf16_slice};
use super::{Threads, isa};

/// Output columns in one packed panel (two 16-lane vectors).
pub const PANEL: usize = 32;
/// Output columns in one half of a panel, stored contiguously.
const HALF: usize = PANEL / 2;
/// How far ahead (in floats) the tile kernels prefetch the weights they
/// stream: 32 inputs. The hardware prefetchers alone left the FMA units
/// waiting on L2 and L3 (AVX2: +12% at batch 32, +16% for one sentence).
const PREFETCH_AHEAD: usize = 32 * HALF;
/// The most activation rows one tile computes at once (the AVX2 kernel
/// takes more, see [`avx2::MAX_ROWS`]).
const MAX_TILE_ROWS: usize = 12;
/// Rows one task takes when a product is split by rows.
const ROWS_PER_TASK: usize = 4 * MAX_TILE_ROWS;

/// A linear layer (`y = x Wᵀ + b`) with its weight packed for [`linear`].
pub struct PackedLinear {
    inputs: usize,
    outputs: usize,
    weights: PackedWeights,
    bias: Vec<f32>,
}

/// A layer's packed weight, by precision and the CPU's kernels.
enum PackedWeights {
    /// `[outputs / PANEL][2][inputs][HALF]`.
    Fp32(Vec<f32>),
    /// The same layout holding bf16-rounded values, for the fp32 kernels
    /// (bf16 precision on a CPU without AVX512-BF16).
    Bf16Rounded(Vec<f32>),
    /// bf16 bits, `[outputs / PANEL][2][inputs / 2][HALF][2]`: each 32-bit
    /// lane holds one column's weights of two consecutive inputs, as
    /// `vdpbf16ps` takes them.
    Bf16(Vec<u16>),
}

impl PackedLinear {
    /// Packs a PyTorch-layout weight (`outputs × inputs`, row-major) and its bias.
    pub fn new(
        weight: &[f32],
        bias: &[f32],
        outputs: usize,
        inputs: usize,
    ) -> Result<Self, String> {
        if weight.len() != outputs * inputs || bias.len() != outputs {
            return Err(format!(
                "linear layer: weight of {} values and bias of {} for {outputs}x{inputs}",
                weight.len(),
                bias.len()
            ));
        }
        if !outputs.is_multiple_of(PANEL) || inputs == 0 {
            return Err(format!(
                "linear layer {outputs}x{inputs}: outputs must be a multiple of {PANEL}"
            ));
        }
        let mut panels = vec![0f32; outputs * inputs];
        for (half, packed) in panels.chunks_exact_mut(inputs * HALF).enumerate() {
            for (input, row) in packed.chunks_exact_mut(HALF).enumerate() {
                for (column, value) in row.iter_mut().enumerate() {
                    *value = weight[(half * HALF + column) * inputs + input];
                }
            }
        }
        Ok(PackedLinear {
            inputs,
            outputs,
            weights: PackedWeights::Fp32(panels),
            bias: bias.to_vec(),
        })
    }

    /// [`PackedLinear::new`] at `precision`: with bf16, the weight is kept
    /// as bf16 for the AVX512-BF16 kernel when this CPU runs it (and the
    /// inputs are even), else as bf16-rounded fp32.
    pub fn with_precision(
        weight: &[f32],
        bias: &[f32],
        outputs: usize,
        inputs: usize,
        precision: Precision,
    ) -> Result<Self, String> {
        let mut layer = Self::new(weight, bias, outputs, inputs)?;
        if precision == Precision::Fp32 {
            return Ok(layer);
        }
        let PackedWeights::Fp32(mut panels) = layer.weights else {
            unreachable!("new packs fp32")
        };
        if isa::avx512_bf16() && inputs.is_multiple_of(2) {
            let mut packed = vec![0u16; outputs * inputs];
            for (half, out) in packed.chunks_exact_mut(inputs * HALF).enumerate() {
                for (pair, lanes) in out.chunks_exact_mut(2 * HALF).enumerate() {
                    for (column, lane) in lanes.chunks_exact_mut(2).enumerate() {
                        for (j, value) in lane.iter_mut().enumerate() {
                            let w = weight[(half * HALF + column) * inputs + 2 * pair + j];
                            *value = to_bf16(w);
                        }
                    }
                }
            }
            layer.weights = PackedWeights::Bf16(packed);
        } else {
            round_to_bf16(&mut panels);
            layer.weights = PackedWeights::Bf16Rounded(panels);
        }
        Ok(layer)
    }

    /// The precision the layer computes at.
    pub fn precision(&self) -> Precision {
        match self.weights {
            PackedWeights::Fp32(_) => Precision::Fp32,
            PackedWeights::Bf16Rounded(_) | PackedWeights::Bf16(_) => Precision::Bf16,
        }
    }

    /// Bytes the packed weight holds.
    pub fn weight_bytes(&self) -> usize {
        match &self.weights {
            PackedWeights::Fp32(panels) | PackedWeights::Bf16Rounded(panels) => panels.len() * 4,
            PackedWeights::Bf16(panels) => panels.len() * 2,
        }
    }

    /// Width of an input row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Width of an output row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
}

/// What happens to each output after the bias is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    Identity,
    /// Exact (erf) GELU.
    Gelu,
}

/// `out = activation(x Wᵀ + b)` for row-major `x` (`rows × inputs`) and
/// `out` (`rows × outputs`).
pub fn linear(
    x: &[f32],
    layer: &PackedLinear,
    activation: Activation,
    out: &mut [f32],
    threads: Threads,
) {
    let rows = x.len() / layer.inputs;
    assert_eq!(x.len(), rows * layer.inputs, "linear: ragged input");
    assert_eq!(out.len(), rows * layer.outputs, "linear: output size");
    let panels = layer.outputs / PANEL;
    if threads == Threads::One {
        block(
            x,
            layer,
            0,
            panels,
            activation,
            &mut ColumnsMut::new(out, layer.outputs),
        );
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    if rows >= ROWS_PER_TASK * threads || threads == 1 {
        out.par_chunks_mut(ROWS_PER_TASK * layer.outputs)
            .zip(x.par_chunks(ROWS_PER_TASK * layer.inputs))
            .for_each(|(out, x)| {
                let out = &mut ColumnsMut::new(out, layer.outputs);
                block(x, layer, 0, panels, activation, out);
            });
        return;
    }
    // Few rows: split the panels, each task writing its columns of `out`.
    let per_task = panels.div_ceil(threads);
    let mut tasks = Vec::with_capacity(threads);
    let mut rest = ColumnsMut::new(out, layer.outputs);
    for first in (0..panels).step_by(per_task) {
        let count = per_task.min(panels - first);
        let (columns, after) = rest.split_at(count * PANEL);
        tasks.push((first, count, columns));
        rest = after;
    }
    tasks
        .into_par_iter()
        .for_each(|(first, count, mut out)| block(x, layer, first, count, activation, &mut out));
}

/// A tile kernel and the most rows one tile of it may have (taken only when
/// that is all the rows there are).
#[derive(Clone, Copy)]
struct TileKernel {
    /// Computes one tile: `(rows, tile, out)`, `out` the tile's first row
    /// and the panel's columns.
    compute: fn(usize, &Tile, &mut ColumnsMut),
    max_rows: usize,
}

/// The tile on any CPU.
const PORTABLE: TileKernel = TileKernel {
    compute: portable_tile,
    max_rows: MAX_TILE_ROWS,
};

/// Panels `first..first + count` of `activation(x Wᵀ + b)` into `out`
/// (`rows × count·PANEL`), on the best tile kernel for this CPU.
fn block(
    x: &[f32],
    layer: &PackedLinear,
    first: usize,
    count: usize,
    activation: Activation,
    out: &mut ColumnsMut,
) {
    let kernel = match isa::active() {
        isa::Isa::Avx512 | isa::Isa::Avx512Bf16 | isa::Isa::Amx => avx512::KERNEL,
        isa::Isa::Avx2 => avx2::KERNEL,
        isa::Isa::Portable => PORTABLE,
    };
    let panels = Panels {
        first,
        count,
        activation,
    };
    match &layer.weights {
        PackedWeights::Fp32(weights) => block_with(kernel, x, layer, weights, &panels, out),
        PackedWeights::Bf16Rounded(weights) => ROUNDED_ROWS.with_borrow_mut(|rows| {
            rows.clear();
            rows.extend_from_slice(x);
            round_to_bf16(rows);
            block_with(kernel, rows, layer, weights, &panels, out);
        }),
        PackedWeights::Bf16(weights) => BF16_ROWS.with_borrow_mut(|rows| {
            let count = x.len() / layer.inputs;
            if isa::amx() && layer.inputs.is_multiple_of(amx::K_STEP) {
                // Whole blocks of rows for the tiles, the padding zero.
                let padded = count.next_multiple_of(amx::ROWS) * layer.inputs;
                rows.resize(padded, 0);
                to_bf16_slice(x, &mut rows[..x.len()]);
                rows[x.len()..].fill(0);
                amx::block(rows, count, layer, weights, &panels, out);
                return;
            }
            rows.resize(x.len(), 0);
            to_bf16_slice(x, rows);
            let heights = tile_heights(count, MAX_TILE_ROWS);
            compute_panels(
                rows,
                &heights,
                layer,
                weights,
                &panels,
                out,
                avx512_bf16::tile,
            );
        }),
    }
}

thread_local! {
    /// A block's input rows rounded to bf16 (kept as fp32), reused.
    static ROUNDED_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A block's input rows as bf16 bits, reused.
    static BF16_ROWS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// [`block`] on a given tile kernel and fp32 weights.
fn block_with(
    kernel: TileKernel,
    x: &[f32],
    layer: &PackedLinear,
    weights: &[f32],
    panels: &Panels,
    out: &mut ColumnsMut,
) {
    let heights = tile_heights(x.len() / layer.inputs, kernel.max_rows);
    compute_panels(x, &heights, layer, weights, panels, out, kernel.compute);
}

/// Tiles of balanced heights (26 rows: 9 + 9 + 8, not 12 + 12 + 2), as
/// `(first row, rows)`. Rows that fit in one tile of the kernel are one
/// tile; more are tiles of at most 12, whose rows and half panel (K = 384)
/// fit in L1 together. The kernels read the rows where they are (one
/// stream per row): packing them input-major first cost 7% of a batch.
fn tile_heights(rows: usize, max_rows: usize) -> Vec<(usize, usize)> {
    let tiles = if rows <= max_rows {
        1
    } else {
        rows.div_ceil(MAX_TILE_ROWS)
    };
    balanced_parts(rows, tiles).collect()
}

/// `total` rows cut into `parts` runs of heights differing by at most one,
/// as `(first row, rows)`: 7 into 2 is 4 + 3, 26 into 3 is 9 + 9 + 8.
fn balanced_parts(total: usize, parts: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut first = 0;
    (0..parts).map(move |part| {
        let height = (total - first).div_ceil(parts - part);
        let run = (first, height);
        first += height;
        run
    })
}

/// Which panels a [`block`] computes, and the activation applied.
struct Panels {
    first: usize,
    count: usize,
    activation: Activation,
}

/// The tiles of `x` (given as `(first row, rows)`) against `panels`, each
/// computed by `compute(rows, tile, out)`: fp32 or bf16 rows and weights.
fn compute_panels<T>(
    x: &[T],
    heights: &[(usize, usize)],
    layer: &PackedLinear,
    all_weights: &[T],
    panels: &Panels,
    out: &mut ColumnsMut,
    compute: impl Fn(usize, &Tile<T>, &mut ColumnsMut),
) {
    let inputs = layer.inputs;
    assert_eq!(out.width(), panels.count * PANEL, "output columns");
    for panel in 0..panels.count {
        let index = panels.first + panel;
        let weights = &all_weights[index * inputs * PANEL..(index + 1) * inputs * PANEL];
        let Some(bias) = layer.bias[index * PANEL..].first_chunk::<PANEL>() else {
            return;
        };
        for &(start, height) in heights {
            let tile = Tile {
                x: &x[start * inputs..(start + height) * inputs],
                inputs,
                weights,
                bias,
                activation: panels.activation,
            };
            compute(height, &tile, &mut out.block(start, panel * PANEL, PANEL));
        }
    }
}

/// A tile's inputs in bf16: `x` its rows (`rows × inputs` bf16 bits),
/// `weights` one panel (two halves of `inputs / 2 × HALF × 2`).
type Bf16Tile<'a> = Tile<'a, u16>;

/// The inputs of one tile: `x` is its rows (`rows × inputs`, row-major),
/// `weights` one panel (two halves of `inputs × HALF`).
struct Tile<'a, T = f32> {
    x: &'a [T],
    inputs: usize,
    weights: &'a [T],
    bias: &'a [f32; PANEL],
    activation: Activation,
}

impl Tile<'_> {
    /// The panel's two halves, one `[f32; HALF]` row per input each.
    fn halves(&self) -> (&[[f32; HALF]], &[[f32; HALF]]) {
        let (low, high) = self.weights.split_at(self.weights.len() / 2);
        (low.as_chunks::<HALF>().0, high.as_chunks::<HALF>().0)
    }
}

/// Stores a finished tile row, applying the activation (its steps fused
/// into multiply-adds when `FMA`, in the tiles compiled with FMA).
#[inline(always)]
fn finish_row<const FMA: bool>(row: &mut [f32; PANEL], activation: Activation, out: &mut [f32]) {
    if activation == Activation::Gelu {
        for v in row.iter_mut() {
            *v = gelu_with::<FMA>(*v);
        }
    }
    out.copy_from_slice(row);
}

/// The tile on any CPU (plain loops; used where AVX2 is missing).
fn portable_tile(rows: usize, tile: &Tile, out: &mut ColumnsMut) {
    let mut acc = [*tile.bias; MAX_TILE_ROWS];
    let (low, high) = tile.halves();
    for (acc_row, x_row) in acc.iter_mut().zip(tile.x.chunks_exact(tile.inputs)) {
        let (acc_low, acc_high) = acc_row.split_at_mut(HALF);
        for ((&value, low), high) in x_row.iter().zip(low).zip(high) {
            for (a, &w) in acc_low.iter_mut().zip(low) {
                *a += value * w;
            }
            for (a, &w) in acc_high.iter_mut().zip(high) {
                *a += value * w;
            }
        }
    }
    for (row, acc_row) in acc.iter_mut().take(rows).enumerate() {
        finish_row::<false>(acc_row, tile.activation, out.row(row));
    }
}

/// `$kernel::<ROWS>(args)` for `$rows` in 1..=12 (12 for anything more):
/// the tile kernels take their row count as a const generic, so their
/// accumulators are arrays the compiler keeps in registers.
macro_rules! for_rows {
    ($rows:expr, $kernel:ident, $($arg:expr),*) => {
        match $rows {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            8 => $kernel::<8>($($arg),*),
            9 => $kernel::<9>($($arg),*),
            10 => $kernel::<10>($($arg),*),
            11 => $kernel::<11>($($arg),*),
            _ => $kernel::<12>($($arg),*),
        }
    };
}

/// The tile in AVX-512 registers: each row's 32 accumulators are two
/// vectors, the weights of one input two loads, each activation one
/// broadcast; 12 rows use 24 of the 32 vector registers.
#[allow(unsafe_code)]
mod avx512 {
    use super::{
        ColumnsMut, HALF, MAX_TILE_ROWS, PANEL, PREFETCH_AHEAD, Tile, TileKernel, finish_row, isa,
    };

    /// Tiles of up to 12 rows.
    pub const KERNEL: TileKernel = TileKernel {
        compute: tile,
        max_rows: MAX_TILE_ROWS,
    };

    /// Computes a tile of `rows` (1..=12) rows. Panics if the CPU lacks
    /// AVX-512 ([`isa::avx512`]).
    pub fn tile(rows: usize, tile: &Tile, out: &mut ColumnsMut) {
        assert!(
            isa::avx512(),
            "AVX-512 kernel called on a CPU without AVX-512"
        );
        assert!((1..=MAX_TILE_ROWS).contains(&rows), "tile of {rows} rows");
        // SAFETY: the CPU supports AVX-512F/VL/BW/DQ and FMA (asserted
        // above), which is all `rows_of` is compiled for.
        unsafe { for_rows!(rows, rows_of, tile, out) }
    }

    /// 16 floats into a vector (inlined into kernels compiled for AVX-512F).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn load(values: &[f32; HALF]) -> std::arch::x86_64::__m512 {
        // SAFETY: reads exactly the 16 floats of `values`; only inlined
        // into functions compiled for AVX-512F.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(values.as_ptr()) }
    }

    /// Stores a tile's accumulators (two vectors a row), applying the
    /// activation (inlined into kernels compiled for AVX-512F and FMA).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn store_rows<const ROWS: usize>(
        low: &[std::arch::x86_64::__m512; ROWS],
        high: &[std::arch::x86_64::__m512; ROWS],
        activation: super::Activation,
        out: &mut ColumnsMut,
    ) {
        for row in 0..ROWS {
            let mut values = [0f32; PANEL];
            let (first, second) = values.split_at_mut(16);
            // SAFETY: each store writes exactly the 16 floats of its half.
            unsafe {
                std::arch::x86_64::_mm512_storeu_ps(first.as_mut_ptr(), low[row]);
                std::arch::x86_64::_mm512_storeu_ps(second.as_mut_ptr(), high[row]);
            }
            finish_row::<true>(&mut values, activation, out.row(row));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    fn rows_of<const ROWS: usize>(tile: &Tile, out: &mut ColumnsMut) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch, _mm512_fmadd_ps, _mm512_set1_ps};

        let (bias_low, bias_high) = tile.bias.as_chunks::<HALF>().0.split_at(1);
        let mut low = [load(&bias_low[0]); ROWS];
        let mut high = [load(&bias_high[0]); ROWS];
        let (low_rows, high_rows) = tile.halves();
        let inputs = tile.inputs;
        assert!(
            low_rows.len() == inputs && tile.x.len() == ROWS * inputs,
            "a tile of {ROWS} rows of {inputs} inputs"
        );
        let x = tile.x.as_ptr();
        for (input, (low_row, high_row)) in low_rows.iter().zip(high_rows).enumerate() {
            let (w_low, w_high) = (load(low_row), load(high_row));
            // Hints only: prefetching never faults, in bounds or not.
            _mm_prefetch::<_MM_HINT_T0>(low_row.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
            _mm_prefetch::<_MM_HINT_T0>(high_row.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
            for row in 0..ROWS {
                // SAFETY: row < ROWS and input < inputs, so the offset is
                // inside the ROWS × inputs values of `tile.x` (asserted).
                let value = _mm512_set1_ps(unsafe { *x.add(row * inputs + input) });
                low[row] = _mm512_fmadd_ps(value, w_low, low[row]);
                high[row] = _mm512_fmadd_ps(value, w_high, high[row]);
            }
        }
        store_rows(&low, &high, tile.activation, out);
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn rows_of<const ROWS: usize>(_: &Tile, _: &mut ColumnsMut) {
        unreachable!("AVX-512 is never available off x86-64")
    }
}

/// bf16 products on AMX tiles: 32 rows × one panel (32 columns) at a
/// time in four 16 × 16 fp32 accumulator tiles, each step of 32 inputs
/// loading two tiles of rows (16 × 32 bf16) and the panel's two halves as
/// they are packed (16 pairs of inputs × 16 columns, the layout
/// `tdpbf16ps` takes), then four `tdpbf16ps`. Bias and activation are
/// applied as the accumulators are stored.
#[allow(unsafe_code)]
mod amx {
    use std::arch::asm;

    use super::{Activation, ColumnsMut, HALF, PANEL, PackedLinear, Panels, finish_row, isa};

    /// Rows computed at once (two tiles of 16).
    pub const ROWS: usize = 32;
    /// Inputs one step takes (a tile row of 32 bf16).
    pub const K_STEP: usize = 32;

    /// The tile shapes: eight tiles of 16 rows × 64 bytes (tiles 0-3 the
    /// fp32 accumulators, 4-5 the rows, 6-7 the panel's halves).
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: TileConfig = {
        let mut bytes_per_row = [0u16; 16];
        let mut rows = [0u8; 16];
        let mut tile = 0;
        while tile < 8 {
            bytes_per_row[tile] = 64;
            rows[tile] = 16;
            tile += 1;
        }
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row,
            rows,
        }
    };

    /// 32 rows × 32 fp32 accumulators, as the tiles store them.
    #[repr(C, align(64))]
    struct Accumulators([[f32; PANEL]; ROWS]);

    /// Panels of `activation(x Wᵀ + b)` for the first `rows` rows of `x`
    /// (bf16 bits, padded with zero rows to a multiple of [`ROWS`]) into
    /// `out`. Panics if the CPU cannot run AMX ([`isa::amx`]) or the
    /// inputs are not a multiple of [`K_STEP`].
    pub fn block(
        x: &[u16],
        rows: usize,
        layer: &PackedLinear,
        weights: &[u16],
        panels: &Panels,
        out: &mut ColumnsMut,
    ) {
        assert!(isa::amx(), "AMX kernel called where AMX is not granted");
        let inputs = layer.inputs;
        assert!(
            inputs.is_multiple_of(K_STEP)
                && x.len() == rows.next_multiple_of(ROWS) * inputs
                && weights.len() == layer.outputs * inputs,
            "an AMX block of {rows} rows of {inputs} inputs"
        );
        let steps = inputs / K_STEP;
        let row_stride = inputs * 2;
        let mut accumulators = Accumulators([[0f32; PANEL]; ROWS]);
        // SAFETY: AMX is granted (asserted); the configuration is a valid
        // palette-1 layout of 8 tiles.
        unsafe {
            asm!("ldtilecfg [{config}]", config = in(reg) &CONFIG, options(nostack, readonly))
        };
        for first_row in (0..rows).step_by(ROWS) {
            for panel in 0..panels.count {
                let index = panels.first + panel;
                let panel_weights = &weights[index * inputs * PANEL..(index + 1) * inputs * PANEL];
                let (low, high) = panel_weights.split_at(inputs * HALF);
                let upper = &x[first_row * inputs..];
                let lower = &x[(first_row + 16) * inputs..];
                let stored = accumulators.0.as_mut_ptr().cast::<f32>();
                // SAFETY: each step reads 16 rows × 64 bytes of `upper` and
                // `lower` at `row_stride` (inside the padded rows: asserted
                // above) and 16 × 64 bytes of each half panel (inputs / 2
                // pairs × 64 bytes each), advancing 64 and 1,024 bytes a
                // step for `steps` = inputs / 32 steps; the stores write the
                // 32 × 32 floats of `accumulators` (128 bytes a row).
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        "2:",
                        "tileloadd tmm4, [{upper} + {row_stride} * 1]",
                        "tileloadd tmm5, [{lower} + {row_stride} * 1]",
                        "tileloadd tmm6, [{low} + {pair_stride} * 1]",
                        "tileloadd tmm7, [{high} + {pair_stride} * 1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "add {upper}, 64",
                        "add {lower}, 64",
                        "add {low}, 1024",
                        "add {high}, 1024",
                        "dec {steps}",
                        "jnz 2b",
                        "tilestored [{stored} + {out_stride} * 1], tmm0",
                        "tilestored [{stored} + {out_stride} * 1 + 64], tmm1",
                        "tilestored [{stored} + {out_stride} * 1 + 2048], tmm2",
                        "tilestored [{stored} + {out_stride} * 1 + 2112], tmm3",
                        upper = inout(reg) upper.as_ptr() => _,
                        lower = inout(reg) lower.as_ptr() => _,
                        low = inout(reg) low.as_ptr() => _,
                        high = inout(reg) high.as_ptr() => _,
                        steps = inout(reg) steps => _,
                        row_stride = in(reg) row_stride,
                        pair_stride = in(reg) 64usize,
                        stored = in(reg) stored,
                        out_stride = in(reg) PANEL * 4,
                        options(nostack)
                    );
                }
                let Some(bias) = layer.bias[index * PANEL..].first_chunk::<PANEL>() else {
                    continue;
                };
                let mut view = out.block(first_row, panel * PANEL, PANEL);
                for (row, values) in accumulators.0.iter_mut().take(rows - first_row).enumerate() {
                    for (value, b) in values.iter_mut().zip(bias) {
                        *value += b;
                    }
                    // SAFETY: AMX implies AVX-512 and FMA, which `finish`
                    // is compiled for.
                    unsafe { finish(values, panels.activation, view.row(row)) };
                }
            }
        }
        // SAFETY: releases the tile state this function configured.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// The epilogue, compiled with FMA so GELU's multiply-adds are fused.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    fn finish(values: &mut [f32; PANEL], activation: Activation, out: &mut [f32]) {
        finish_row::<true>(values, activation, out);
    }
}

/// The tile on AVX512-BF16: as [`avx512`], 12 rows × 32 fp32
/// accumulators, but each step takes two inputs: one load per half panel
/// holds 16 columns' weights of both, one 32-bit broadcast a row's two
/// inputs, and `vdpbf16ps` adds both products to each accumulator.
#[allow(unsafe_code)]
mod avx512_bf16 {
    use super::{Bf16Tile, ColumnsMut, HALF, MAX_TILE_ROWS, PREFETCH_AHEAD, isa};

    /// Computes a tile of `rows` (1..=12) rows. Panics if the CPU lacks
    /// AVX512-BF16 ([`isa::avx512_bf16`]).
    pub fn tile(rows: usize, tile: &Bf16Tile, out: &mut ColumnsMut) {
        assert!(
            isa::avx512_bf16(),
            "AVX512-BF16 kernel called on a CPU without it"
        );
        assert!((1..=MAX_TILE_ROWS).contains(&rows), "tile of {rows} rows");
        // SAFETY: the CPU supports AVX-512F/VL/BW/DQ, AVX512-BF16 and FMA
        // (asserted above), which is all `rows_of` is compiled for.
        unsafe { for_rows!(rows, rows_of, tile, out) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma")]
    fn rows_of<const ROWS: usize>(tile: &Bf16Tile, out: &mut ColumnsMut) {
        use std::arch::x86_64::{
            __m512bh, __m512i, _MM_HINT_T0, _mm_prefetch, _mm512_dpbf16_ps, _mm512_loadu_si512,
            _mm512_set1_epi32,
        };

        use super::avx512::{load, store_rows};

        /// 32 bf16 values (16 columns × 2 inputs) of a half panel.
        #[inline(always)]
        fn load_pairs(values: &[u16; 2 * HALF]) -> __m512bh {
            // SAFETY: reads exactly the 64 bytes of `values`; AVX-512F is
            // enabled in the only caller. Both types are 64 bytes of lanes.
            unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(values.as_ptr().cast()))
            }
        }
        let (bias_low, bias_high) = tile.bias.as_chunks::<HALF>().0.split_at(1);
        let mut low = [load(&bias_low[0]); ROWS];
        let mut high = [load(&bias_high[0]); ROWS];
        let inputs = tile.inputs;
        let pairs = inputs / 2;
        let (low_half, high_half) = tile.weights.split_at(tile.weights.len() / 2);
        let (low_pairs, high_pairs) = (
            low_half.as_chunks::<{ 2 * HALF }>().0,
            high_half.as_chunks::<{ 2 * HALF }>().0,
        );
        assert!(
            inputs.is_multiple_of(2)
                && low_pairs.len() == pairs
                && high_pairs.len() == pairs
                && tile.x.len() == ROWS * inputs,
            "a bf16 tile of {ROWS} rows of {inputs} inputs"
        );
        let x = tile.x.as_ptr();
        for (pair, (low_row, high_row)) in low_pairs.iter().zip(high_pairs).enumerate() {
            let (w_low, w_high) = (load_pairs(low_row), load_pairs(high_row));
            // Hints only: prefetching never faults, in bounds or not.
            _mm_prefetch::<_MM_HINT_T0>(low_row.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
            _mm_prefetch::<_MM_HINT_T0>(high_row.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
            for row in 0..ROWS {
                // SAFETY: row < ROWS and 2·pair + 1 < inputs, so both bf16
                // values read are inside the ROWS × inputs of `tile.x`
                // (asserted); read unaligned as one 32-bit pair.
                let both = unsafe {
                    x.add(row * inputs + 2 * pair)
                        .cast::<i32>()
                        .read_unaligned()
                };
                // SAFETY: as `load_pairs`: 64 bytes of lanes either way.
                let value =
                    unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(both)) };
                low[row] = _mm512_dpbf16_ps(low[row], value, w_low);
                high[row] = _mm512_dpbf16_ps(high[row], value, w_high);
            }
        }
        store_rows(&low, &high, tile.activation, out);
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn rows_of<const ROWS: usize>(_: &Bf16Tile, _: &mut ColumnsMut) {
        unreachable!("AVX512-BF16 is never available off x86-64")
    }
}

/// The tile in AVX2 registers (16 of them): half a panel (16 outputs, two
/// 8-lane vectors) for six rows at a time holds 12 accumulators, with the
/// two weight vectors and the broadcast activation in the other 4. Each
/// half panel is streamed once per six rows, for all rows of the tile
/// before the other half.
#[allow(unsafe_code)]
mod avx2 {
    use super::{ColumnsMut, HALF, PREFETCH_AHEAD, Tile, TileKernel, balanced_parts, isa};
    use crate::encoder::cpu::gemm::Activation;
    use crate::encoder::cpu::ops::gelu_with;

    /// Rows computed together: 6 × 2 accumulators.
    const ROWS_AT_ONCE: usize = 6;
    /// Rows of a lone tile: three groups of six, each reading the half
    /// panel from L1 after the first has brought it there. (A 14-token
    /// sentence is one tile of 5 + 5 + 4 rows, not two of 4 + 3.)
    pub const MAX_ROWS: usize = 3 * ROWS_AT_ONCE;

    /// Tiles of up to [`MAX_ROWS`] rows.
    pub const KERNEL: TileKernel = TileKernel {
        compute: tile,
        max_rows: MAX_ROWS,
    };

    /// Computes a tile of `rows` (1..=[`MAX_ROWS`]) rows. Panics if the CPU
    /// lacks AVX2 and FMA ([`isa::avx2`]).
    pub fn tile(rows: usize, tile: &Tile, out: &mut ColumnsMut) {
        assert!(
            isa::avx2(),
            "AVX2 kernel called on a CPU without AVX2 and FMA"
        );
        assert!((1..=MAX_ROWS).contains(&rows), "tile of {rows} rows");
        // Half-panel major: both six-row groups run on one half panel while
        // it is hot in L1, then on the other.
        // SAFETY: the CPU supports AVX2 and FMA (asserted above), which is
        // all `half_panel` is compiled for.
        unsafe {
            half_panel::<0>(rows, tile, out);
            half_panel::<1>(rows, tile, out);
        }
    }

    /// Half `H` of the panel for all `rows`, in groups of at most six rows
    /// of balanced heights (7 rows: 4 + 3, not 6 + 1). A group of fewer
    /// than four rows waits on the FMA latency (4 cycles) with its few
    /// accumulator chains, so a lone leftover row costs almost what four do.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn half_panel<const H: usize>(rows: usize, tile: &Tile, out: &mut ColumnsMut) {
        for (first, count) in balanced_parts(rows, rows.div_ceil(ROWS_AT_ONCE)) {
            let out = &mut out.block(first, H * HALF, HALF);
            let x = &tile.x[first * tile.inputs..(first + count) * tile.inputs];
            match count {
                1 => rows_of::<1, H>(tile, x, out),
                2 => rows_of::<2, H>(tile, x, out),
                3 => rows_of::<3, H>(tile, x, out),
                4 => rows_of::<4, H>(tile, x, out),
                5 => rows_of::<5, H>(tile, x, out),
                _ => rows_of::<6, H>(tile, x, out),
            }
        }
    }

    /// The `ROWS` rows `x` (row-major, of `tile`'s inputs) against half `H`
    /// of the tile's panel.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn rows_of<const ROWS: usize, const H: usize>(tile: &Tile, x: &[f32], out: &mut ColumnsMut) {
        use std::arch::x86_64::{
            __m256, _MM_HINT_T0, _mm_prefetch, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps,
            _mm256_storeu_ps,
        };

        #[inline(always)]
        fn load(values: &[f32; 8]) -> __m256 {
            // SAFETY: reads exactly the 8 floats of `values`; AVX is enabled
            // in the only caller.
            unsafe { _mm256_loadu_ps(values.as_ptr()) }
        }
        #[inline(always)]
        fn store(vector: __m256, values: &mut [f32; 8]) {
            // SAFETY: writes exactly the 8 floats of `values`.
            unsafe { _mm256_storeu_ps(values.as_mut_ptr(), vector) }
        }
        #[inline(always)]
        fn vectors(row: &[f32; HALF]) -> [__m256; 2] {
            let (chunks, _) = row.as_chunks::<8>();
            [load(&chunks[0]), load(&chunks[1])]
        }
        const UNROLL: usize = 4;
        let mut acc = [vectors(&tile.bias.as_chunks::<HALF>().0[H]); ROWS];
        let (low_rows, high_rows) = tile.halves();
        let weight_rows = if H == 0 { low_rows } else { high_rows };
        let inputs = tile.inputs;
        assert!(
            weight_rows.len() == inputs && x.len() == ROWS * inputs,
            "{ROWS} rows of {inputs} inputs"
        );
        let x = x.as_ptr();
        // Four inputs per iteration: the rows' addresses are computed once
        // for the four.
        let (quads, rest) = weight_rows.as_chunks::<UNROLL>();
        for (quad, weight_quad) in quads.iter().enumerate() {
            for (step, weight_row) in weight_quad.iter().enumerate() {
                let input = quad * UNROLL + step;
                let [w0, w1] = vectors(weight_row);
                // A hint only: prefetching never faults, in bounds or not.
                _mm_prefetch::<_MM_HINT_T0>(
                    weight_row.as_ptr().wrapping_add(PREFETCH_AHEAD).cast(),
                );
                for (row, [low, high]) in acc.iter_mut().enumerate() {
                    // SAFETY: row < ROWS and input < inputs, so the offset is
                    // inside the ROWS × inputs values of `x` (asserted).
                    let value = _mm256_set1_ps(unsafe { *x.add(row * inputs + input) });
                    *low = _mm256_fmadd_ps(value, w0, *low);
                    *high = _mm256_fmadd_ps(value, w1, *high);
                }
            }
        }
        for (step, weight_row) in rest.iter().enumerate() {
            let input = quads.len() * UNROLL + step;
            let [w0, w1] = vectors(weight_row);
            for (row, [low, high]) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let value = _mm256_set1_ps(unsafe { *x.add(row * inputs + input) });
                *low = _mm256_fmadd_ps(value, w0, *low);
                *high = _mm256_fmadd_ps(value, w1, *high);
            }
        }
        let mut values = [[0f32; HALF]; ROWS];
        for (values, [low, high]) in values.iter_mut().zip(&acc) {
            let (chunks, _) = values.as_chunks_mut::<8>();
            store(*low, &mut chunks[0]);
            store(*high, &mut chunks[1]);
        }
        if tile.activation == Activation::Gelu {
            // All rows in one loop: their GELUs are independent chains the
            // core overlaps.
            for v in values.as_flattened_mut() {
                *v = gelu_with::<true>(*v);
            }
        }
        for (row, values) in values.iter().enumerate() {
            out.row(row).copy_from_slice(values);
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn half_panel<const H: usize>(_: usize, _: &Tile, _: &mut ColumnsMut) {
        unreachable!("AVX2 is never available off x86-64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix with values in [-1, 1).
    fn matrix(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn max_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    fn naive(x: &[f32], weight: &[f32], bias: &[f32], inputs: usize, gelu_on: bool) -> Vec<f32> {
        let outputs = bias.len();
        let mut out = Vec::new();
        for row in x.chunks_exact(inputs) {
            for o in 0..outputs {
                let dot: f64 = row
                    .iter()
                    .zip(&weight[o * inputs..(o + 1) * inputs])
                    .map(|(&a, &w)| a as f64 * w as f64)
                    .sum();
                let v = (dot + bias[o] as f64) as f32;
                out.push(if gelu_on {
                    super::super::ops::gelu(v)
                } else {
                    v
                });
            }
        }
        out
    }

    #[test]
    fn every_tile_height_matches_a_naive_product() {
        let (inputs, outputs) = (70, 96);
        let weight = matrix(outputs * inputs, 1);
        let bias = matrix(outputs, 2);
        let layer = PackedLinear::new(&weight, &bias, outputs, inputs).unwrap();
        for activation in [Activation::Identity, Activation::Gelu] {
            // 1..=18 rows exercise each tile height (12 on AVX-512, 18 on
            // AVX2) and each balanced split into row groups; 13, 19, 50 and
            // 100 rows the split into several tiles and both thread splits.
            for rows in (1..=19).chain([50, 100]) {
                let x = matrix(rows * inputs, rows as u32 + 3);
                let want = naive(&x, &weight, &bias, inputs, activation == Activation::Gelu);
                for threads in [Threads::One, Threads::Pool] {
                    let mut out = vec![f32::NAN; rows * outputs];
                    linear(&x, &layer, activation, &mut out, threads);
                    let worst = max_difference(&out, &want);
                    assert!(
                        worst < 1e-4,
                        "{rows} rows, {activation:?}, {threads:?}: off by {worst}"
                    );
                }
                // Every lower tile this CPU can run, whichever one is chosen.
                let all = Panels {
                    first: 0,
                    count: outputs / PANEL,
                    activation,
                };
                let mut kernels: Vec<(&str, TileKernel)> = vec![("portable", PORTABLE)];
                if isa::avx2() {
                    kernels.push(("avx2", avx2::KERNEL));
                }
                let PackedWeights::Fp32(weights) = &layer.weights else {
                    panic!("new packs fp32");
                };
                for (name, kernel) in kernels {
                    let mut out = vec![f32::NAN; rows * outputs];
                    let view = &mut ColumnsMut::new(&mut out, outputs);
                    block_with(kernel, &x, &layer, weights, &all, view);
                    let worst = max_difference(&out, &want);
                    assert!(
                        worst < 1e-4,
                        "{name}, {rows} rows, {activation:?}: off by {worst}"
                    );
                }
            }
        }
    }

    /// Rounds to bf16 and back.
    fn rounded(values: &[f32]) -> Vec<f32> {
        values
            .iter()
            .map(|&v| crate::encoder::cpu::precision::from_bf16(to_bf16(v)))
            .collect()
    }

    #[test]
    fn bf16_layers_compute_the_products_of_rounded_values() {
        // 70 inputs: the AVX512-BF16 tiles; 64: AMX where granted.
        for inputs in [70, 64] {
            bf16_layer_matches(inputs);
        }
    }

    fn bf16_layer_matches(inputs: usize) {
        let outputs = 96;
        let weight = matrix(outputs * inputs, 5);
        let bias = matrix(outputs, 6);
        let native =
            PackedLinear::with_precision(&weight, &bias, outputs, inputs, Precision::Bf16).unwrap();
        assert_eq!(native.precision(), Precision::Bf16);
        assert_eq!(
            matches!(native.weights, PackedWeights::Bf16(_)),
            isa::avx512_bf16(),
            "bf16 weights exactly when the CPU has AVX512-BF16"
        );
        assert_eq!(
            native.weight_bytes(),
            outputs * inputs * if isa::avx512_bf16() { 2 } else { 4 }
        );
        // The rounded-fp32 layout as a CPU without AVX512-BF16 holds it.
        let mut panels = match PackedLinear::new(&weight, &bias, outputs, inputs)
            .unwrap()
            .weights
        {
            PackedWeights::Fp32(panels) => panels,
            _ => unreachable!(),
        };
        round_to_bf16(&mut panels);
        let emulated = PackedLinear {
            inputs,
            outputs,
            weights: PackedWeights::Bf16Rounded(panels),
            bias: bias.clone(),
        };
        let rounded_weight = rounded(&weight);
        for activation in [Activation::Identity, Activation::Gelu] {
            for rows in (1..=13).chain([16, 31, 32, 33, 50, 100]) {
                let x = matrix(rows * inputs, rows as u32 + 9);
                let want = naive(
                    &rounded(&x),
                    &rounded_weight,
                    &bias,
                    inputs,
                    activation == Activation::Gelu,
                );
                for (name, layer) in [("native", &native), ("rounded", &emulated)] {
                    for threads in [Threads::One, Threads::Pool] {
                        let mut out = vec![f32::NAN; rows * outputs];
                        linear(&x, layer, activation, &mut out, threads);
                        let worst = max_difference(&out, &want);
                        assert!(
                            worst < 1e-4,
                            "{name}, {inputs} inputs, {rows} rows, {activation:?}, {threads:?}: off by {worst}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packing_refuses_shapes_it_cannot_hold() {
        assert!(
            PackedLinear::new(&[0.0; 30 * 4], &[0.0; 30], 30, 4).is_err(),
            "30 outputs is not whole panels"
        );
        assert!(
            PackedLinear::new(&[0.0; 10], &[0.0; 32], 32, 4).is_err(),
            "too few weights"
        );
    }
}
