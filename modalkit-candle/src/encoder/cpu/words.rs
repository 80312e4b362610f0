//! The word-embedding table, read from the model file row by row as
//! tokens need it instead of held in memory: it is half of MiniLM's weights
//! (30,522 × 384 floats, 47 MB) and a batch touches a few hundred rows.
//! Positioned reads come from the OS page cache, which is shared and not
//! counted in the process's resident memory; a batch's repeated tokens are
//! read once.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// Rows of a row-major f32 matrix stored in a file.
pub struct WordTable {
    file: File,
    /// Byte offset of row 0 in the file.
    offset: u64,
    rows: usize,
    width: usize,
}

impl WordTable {
    /// The `rows × width` little-endian f32 matrix at byte `offset` of `path`.
    pub fn open(path: &Path, offset: u64, rows: usize, width: usize) -> Result<Self, String> {
        let file = File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
        let needed = offset + (rows * width * 4) as u64;
        let length = file
            .metadata()
            .map_err(|err| format!("{}: {err}", path.display()))?
            .len();
        if length < needed {
            return Err(format!(
                "{}: {length} bytes, the word embeddings need {needed}",
                path.display()
            ));
        }
        Ok(WordTable {
            file,
            offset,
            rows,
            width,
        })
    }

    /// Number of rows (the vocabulary size).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes row `ids[i]` into row `i` of `out` (`ids.len() × width`).
    /// Ids must be below [`WordTable::rows`].
    pub fn gather(&self, ids: impl Iterator<Item = u32>, out: &mut [f32]) -> Result<(), String> {
        let width = self.width;
        let mut first_row: HashMap<u32, usize> = HashMap::new();
        for (index, id) in ids.enumerate() {
            if let Some(&earlier) = first_row.get(&id) {
                out.copy_within(earlier * width..(earlier + 1) * width, index * width);
                continue;
            }
            let row = &mut out[index * width..(index + 1) * width];
            self.read_row(id, row)?;
            first_row.insert(id, index);
        }
        Ok(())
    }

    fn read_row(&self, id: u32, row: &mut [f32]) -> Result<(), String> {
        let at = self.offset + (id as usize * self.width * 4) as u64;
        read_exact_at(&self.file, bytemuck::cast_slice_mut(row), at)
            .map_err(|err| format!("reading word embedding {id}: {err}"))?;
        if cfg!(target_endian = "big") {
            row.iter_mut()
                .for_each(|v| *v = f32::from_bits(v.to_bits().swap_bytes()));
        }
        Ok(())
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buffer: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buffer, at)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buffer: &mut [u8], mut at: u64) -> std::io::Result<()> {
    while !buffer.is_empty() {
        let read = std::os::windows::fs::FileExt::seek_read(file, buffer, at)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer = &mut buffer[read..];
        at += read as u64;
    }
    Ok(())
}
