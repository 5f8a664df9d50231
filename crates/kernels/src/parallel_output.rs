//! New f32 output buffers, first written by the threads that then finish them.
//!
//! `vec![0f32; n]` zeroes the whole buffer on the calling thread before any kernel runs: one
//! single-threaded pass over every output (mimalloc hands back used memory, so the zeroing is a
//! real `memset`), and for the linear layers a second one copying the bias into each row. At
//! ViT-L/16's shapes (1576 x 4096 outputs in fc1) those two passes were 2.5 ms of a 34 ms layer,
//! 7%. Here each chunk is initialised by the task that finishes it, in parallel, and the
//! kernel's own writes follow while the chunk is still in that thread's cache.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// What a chunk holds before its task finishes it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a> {
    /// Zeros (for kernels that overwrite or accumulate onto every value).
    Zeros,
    /// This row repeated (a bias that a product then accumulates onto); chunks hold whole rows.
    Rows(&'a [f32]),
    /// These values (as many as the buffer), each row plus `rows` if given (a residual branch
    /// and a bias, which a product then accumulates onto).
    Values { values: &'a [f32], rows: Option<&'a [f32]> },
    /// Each of `values` repeated over a plane of `plane` values, the values in turn (a bias per
    /// channel of an NCHW output, which a product then accumulates onto); chunks hold whole sets
    /// of planes.
    Planes { values: &'a [f32], plane: usize },
}

/// A buffer of `len` values built in parallel, `chunk_len` values per task (the last chunk may be
/// shorter): each task fills its chunk as `start` says, then `finish(index, chunk)` completes it.
/// With `Start::Rows(row)`, `chunk_len` and `len` must be multiples of the row's length, so that
/// every chunk begins at a row (an error otherwise, as is an empty row with `len` > 0); likewise
/// with `Start::Planes` of the planes' total length.
pub(crate) fn build_in_chunks(
    len: usize,
    chunk_len: usize,
    start: Start<'_>,
    finish: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> candle_core::Result<Vec<f32>> {
    Ok(build_in_chunks_collecting(len, 0, chunk_len, start, finish)?.0)
}

/// `len` zeros, written in parallel (`vec![0f32; len]` writes them on one thread), for outputs
/// whose tasks cannot be the chunks' (views across chunks, such as the attention's heads); with
/// room for `reserve` more values after them.
pub(crate) fn zeros(len: usize, reserve: usize) -> Vec<f32> {
    // 64 KiB per task.
    const CHUNK: usize = 1 << 14;
    // `Start::Zeros` has no error case; the fallback keeps this free of a panic all the same.
    build_in_chunks_collecting(len, reserve, CHUNK, Start::Zeros, |_, _| {}).map_or_else(|_| vec![0f32; len], |(values, _)| values)
}

/// [`build_in_chunks`], also returning what each chunk's `finish` returns (in chunk order), and
/// with room for `reserve` more values after the `len` (so that appending them does not copy
/// the buffer).
#[allow(unsafe_code)]
pub(crate) fn build_in_chunks_collecting<R: Send>(
    len: usize,
    reserve: usize,
    chunk_len: usize,
    start: Start<'_>,
    finish: impl Fn(usize, &mut [f32]) -> R + Sync + Send,
) -> candle_core::Result<(Vec<f32>, Vec<R>)> {
    let chunk_len = chunk_len.max(1);
    // The length every chunk's start repeats, which must divide the chunks and the buffer.
    let period = match start {
        Start::Zeros => None,
        Start::Rows(row) => Some(row.len()),
        Start::Values { values, rows } => {
            if values.len() != len {
                candle_core::bail!("{} starting values for an output of {len}", values.len());
            }
            rows.map(<[f32]>::len)
        }
        Start::Planes { values, plane } => Some(values.len() * plane),
    };
    if let Some(period) = period
        && len > 0
        && (period == 0 || !chunk_len.is_multiple_of(period) || !len.is_multiple_of(period))
    {
        candle_core::bail!("output rows of {period} values do not divide chunks of {chunk_len} or {len} values");
    }
    let mut values = Vec::<f32>::with_capacity(len + reserve);
    let results = values.spare_capacity_mut()[..len].par_chunks_mut(chunk_len).enumerate().map(|(index, chunk)| {
        match start {
            Start::Zeros => chunk.fill(MaybeUninit::new(0.0)),
            Start::Rows(row) => {
                for slots in chunk.chunks_exact_mut(row.len()) {
                    slots.iter_mut().zip(row).for_each(|(slot, &value)| {
                        slot.write(value);
                    });
                }
            }
            Start::Planes { values, plane } => {
                for (slots, &value) in chunk.chunks_exact_mut(plane).zip(values.iter().cycle()) {
                    slots.fill(MaybeUninit::new(value));
                }
            }
            Start::Values { values, rows } => {
                let values = &values[index * chunk_len..][..chunk.len()];
                match rows {
                    None => chunk.iter_mut().zip(values).for_each(|(slot, &value)| {
                        slot.write(value);
                    }),
                    Some(row) => {
                        for (slots, values) in chunk.chunks_exact_mut(row.len()).zip(values.chunks_exact(row.len())) {
                            slots.iter_mut().zip(values).zip(row).for_each(|((slot, &value), &add)| {
                                slot.write(value + add);
                            });
                        }
                    }
                }
            }
        }
        // Every element of `chunk` was written just above: `fill` writes them all; the values
        // are as many as the buffer (checked on entry), so each chunk has as many; and with
        // rows or planes the chunk's length is a multiple of the row's or the planes' (checked
        // on entry), so `chunks_exact_mut` leaves no remainder.
        // SAFETY: `chunk` is initialised (above); `MaybeUninit<f32>` has f32's layout, and the
        // new slice borrows `chunk` exclusively for as long as `chunk` is borrowed.
        let chunk = unsafe { &mut *(std::ptr::from_mut::<[MaybeUninit<f32>]>(chunk) as *mut [f32]) };
        finish(index, chunk)
    });
    let results: Vec<R> = results.collect();
    // SAFETY: the chunks cover the first `len` slots of the spare capacity (`len` <= capacity),
    // and each was initialised by its task above; a panic in `finish` propagates out of
    // `collect` before this line, leaving the vector empty.
    unsafe { values.set_len(len) };
    Ok((values, results))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Start, build_in_chunks, build_in_chunks_collecting, zeros};

    #[test]
    fn chunks_start_as_asked_and_are_finished_by_index() {
        // 7 rows of 3 bias values, 2 rows per chunk (the last chunk one row); each task adds
        // its chunk's index to every value.
        let bias = [0.5f32, -1.0, 2.0];
        let built = build_in_chunks(21, 6, Start::Rows(&bias), |index, chunk| {
            chunk.iter_mut().for_each(|v| *v += index as f32 * 10.0);
        })
        .unwrap();
        let want: Vec<f32> = (0..7).flat_map(|row| bias.iter().map(move |b| b + (row / 2) as f32 * 10.0)).collect();
        assert_eq!(built, want);

        let zeros = build_in_chunks(10, 4, Start::Zeros, |index, chunk| chunk[0] = index as f32 + 1.0).unwrap();
        assert_eq!(zeros, [1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
        assert!(build_in_chunks(0, 0, Start::Rows(&[]), |_, _| unreachable!()).unwrap().is_empty());

        // Values, alone and plus a row: 3 rows of 2, chunks of one row.
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let copied = build_in_chunks(6, 2, Start::Values { values: &values, rows: None }, |_, _| {}).unwrap();
        assert_eq!(copied, values);
        let summed = build_in_chunks(6, 2, Start::Values { values: &values, rows: Some(&[10.0, 20.0]) }, |index, chunk| {
            chunk[1] -= index as f32;
        })
        .unwrap();
        assert_eq!(summed, [11.0, 22.0, 13.0, 23.0, 15.0, 24.0]);

        // Planes: 2 images of 3 channels of 2 values, one image per chunk.
        let planes = build_in_chunks(12, 6, Start::Planes { values: &[1.0, 2.0, 3.0], plane: 2 }, |index, chunk| {
            chunk[0] += index as f32 * 10.0;
        })
        .unwrap();
        assert_eq!(planes, [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 11.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
    }

    /// Each chunk's result comes back in chunk order, and the reserve is room after the values.
    #[test]
    fn chunk_results_come_back_in_order_with_room_reserved() {
        let (values, sums) = build_in_chunks_collecting(10_000, 7, 64, Start::Zeros, |index, chunk| {
            chunk.iter_mut().enumerate().for_each(|(i, v)| *v = (index * 64 + i) as f32);
            chunk.iter().sum::<f32>()
        })
        .unwrap();
        assert_eq!(values, (0..10_000).map(|i| i as f32).collect::<Vec<_>>());
        let want: Vec<f32> = values.chunks(64).map(|chunk| chunk.iter().sum()).collect();
        assert_eq!(sums, want);
        assert!(values.capacity() >= 10_007);
        assert_eq!(zeros(100_003, 0), vec![0f32; 100_003]);
        assert!(zeros(100, 20).capacity() >= 120);
        assert!(zeros(0, 0).is_empty());
    }

    #[test]
    fn rows_that_do_not_divide_the_chunks_are_an_error() {
        let error = build_in_chunks(12, 5, Start::Rows(&[1.0, 2.0]), |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("rows of 2 values"), "{error}");
        assert!(build_in_chunks(4, 4, Start::Rows(&[]), |_, _| {}).is_err());
        let error = build_in_chunks(12, 4, Start::Planes { values: &[1.0, 2.0, 3.0], plane: 2 }, |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("rows of 6 values"), "{error}");
        assert!(build_in_chunks(4, 4, Start::Planes { values: &[1.0], plane: 0 }, |_, _| {}).is_err());
        let error = build_in_chunks(4, 4, Start::Values { values: &[1.0; 3], rows: None }, |_, _| {}).unwrap_err().to_string();
        assert!(error.contains("3 starting values for an output of 4"), "{error}");
    }
}
