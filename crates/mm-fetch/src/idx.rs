//! The idx format of MNIST and its relatives (Fashion-MNIST, EMNIST, KMNIST): a magic number
//! naming the element type and the number of dimensions, the dimensions as big-endian `u32`, then
//! the elements, big-endian. Gzip-compressed files (`.gz`, as distributed) are read directly.
//!
//! The one MNIST reader of mm: the converter here, mm-datasets' audio-visual digits, the
//! benches and the tests all read idx files through [`read_idx`] (or [`read_mnist`], a split's
//! images with their labels).
//!
//! ```no_run
//! let images = mm_fetch::idx::read_idx("mnist/t10k-images-idx3-ubyte.gz")?;
//! assert_eq!(images.shape, vec![10_000, 28, 28]);
//! let pixels: Vec<u8> = images.into_u8()?;
//! let split = mm_fetch::idx::read_mnist("mnist".as_ref(), "t10k")?;
//! assert_eq!(split.labels.len(), split.count);
//! # Ok::<(), mm_fetch::Error>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The elements of an idx file, in their stored type.
#[derive(Debug, Clone, PartialEq)]
pub enum IdxData {
    /// Type 0x08.
    U8(Vec<u8>),
    /// Type 0x09.
    I8(Vec<i8>),
    /// Type 0x0B.
    I16(Vec<i16>),
    /// Type 0x0C.
    I32(Vec<i32>),
    /// Type 0x0D.
    F32(Vec<f32>),
    /// Type 0x0E.
    F64(Vec<f64>),
}

/// A decoded idx file.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    /// The file it came from.
    pub path: PathBuf,
    /// The dimensions, outermost first (`[count, rows, cols]` for MNIST images).
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: IdxData,
}

impl Idx {
    /// The elements of type `u8`, row-major (their dimensions are [`Idx::shape`]); an error
    /// for any other stored type.
    pub fn into_u8(self) -> Result<Vec<u8>> {
        match self.data {
            IdxData::U8(v) => Ok(v),
            other => Err(Error::format(
                &self.path,
                format!("holds {} elements, not u8", type_name(&other)),
            )),
        }
    }
}

fn type_name(d: &IdxData) -> &'static str {
    match d {
        IdxData::U8(_) => "u8",
        IdxData::I8(_) => "i8",
        IdxData::I16(_) => "i16",
        IdxData::I32(_) => "i32",
        IdxData::F32(_) => "f32",
        IdxData::F64(_) => "f64",
    }
}

/// Reads an idx file, plain or gzip-compressed (recognised by its content, not its name).
pub fn read_idx(path: impl AsRef<Path>) -> Result<Idx> {
    let path = path.as_ref();
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| {
            Error::format(path, format!("gzip stream is corrupt or truncated: {e}"))
        })?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, path)
}

/// Parses idx bytes; `path` names them in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<Idx> {
    let err = |m: String| Error::format(path, m);
    if bytes.len() < 4 {
        return Err(err(format!("{} bytes: too short for an idx header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "not an idx file: magic starts {:02x} {:02x}, expected 00 00",
            bytes[0], bytes[1]
        )));
    }
    let (type_code, ndims) = (bytes[2], bytes[3] as usize);
    let elem_size = match type_code {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        other => return Err(err(format!("unknown idx element type 0x{other:02x}"))),
    };
    if ndims == 0 {
        return Err(err("idx header declares 0 dimensions".to_string()));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(err(format!(
            "truncated header: {ndims} dimensions need {header} bytes, file has {}",
            bytes.len()
        )));
    }
    let shape: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(elem_size).map(|b| (n, b)));
    let Some((count, body_len)) = count else {
        return Err(err(format!("dimensions {shape:?} overflow")));
    };
    let body = &bytes[header..];
    if body.len() != body_len {
        let what = if body.len() < body_len { "truncated" } else { "trailing bytes" };
        return Err(err(format!(
            "{what}: dimensions {shape:?} need {body_len} bytes of data, file has {}",
            body.len()
        )));
    }
    let data = match type_code {
        0x08 => IdxData::U8(body.to_vec()),
        0x09 => IdxData::I8(body.iter().map(|&b| b as i8).collect()),
        0x0B => {
            IdxData::I16(body.chunks_exact(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect())
        }
        0x0C => IdxData::I32(
            body.chunks_exact(4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect(),
        ),
        0x0D => IdxData::F32(
            body.chunks_exact(4).map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect(),
        ),
        _ => IdxData::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    };
    debug_assert_eq!(count, shape.iter().product::<usize>());
    Ok(Idx { path: path.to_path_buf(), shape, data })
}

/// One split of an MNIST-style data set: `count` greyscale images of `height` × `width` pixels
/// and one label each.
#[derive(Debug, Clone, PartialEq)]
pub struct Mnist {
    /// The number of images.
    pub count: usize,
    /// Rows of an image.
    pub height: usize,
    /// Columns of an image.
    pub width: usize,
    /// The pixels, image after image, row-major.
    pub pixels: Vec<u8>,
    /// The labels, one per image.
    pub labels: Vec<u8>,
}

impl Mnist {
    /// The pixels of image `i` (`height × width`, row-major); `None` past the last image.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let size = self.height * self.width;
        self.pixels.get(i * size..(i + 1) * size)
    }
}

/// Reads the split `prefix` (`train` or `t10k`) of an MNIST-style data set from `dir`:
/// `{prefix}-images-idx3-ubyte` and `{prefix}-labels-idx1-ubyte`, each gzip-compressed
/// (`.gz`, preferred when both are there) or not. Images must be `[n, rows, cols]` of `u8`,
/// labels `[n]` of `u8`.
pub fn read_mnist(dir: &Path, prefix: &str) -> Result<Mnist> {
    let find = |stem: &str| -> Result<PathBuf> {
        [format!("{stem}.gz"), stem.to_string()]
            .into_iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::io(
                    dir.join(format!("{stem}.gz")),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "MNIST file not found"),
                )
            })
    };
    let images_path = find(&format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(&format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    let [count, height, width] = images.shape[..] else {
        return Err(Error::format(
            &images_path,
            format!("images of shape {:?}, expected [n, h, w]", images.shape),
        ));
    };
    if labels.shape != [count] {
        return Err(Error::format(
            &labels_path,
            format!("labels of shape {:?} for {count} images", labels.shape),
        ));
    }
    Ok(Mnist { count, height, width, pixels: images.into_u8()?, labels: labels.into_u8()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(type_code: u8, dims: &[u32]) -> Vec<u8> {
        let mut b = vec![0, 0, type_code, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn parses_each_element_type() {
        let p = Path::new("t.idx");
        let mut b = header(0x08, &[2, 3]);
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let idx = parse_idx(&b, p).expect("u8");
        assert_eq!(idx.shape, vec![2, 3]);
        assert_eq!(idx.clone().into_u8().expect("u8")[5], 6);

        let mut b = header(0x0B, &[2]);
        b.extend_from_slice(&(-2i16).to_be_bytes());
        b.extend_from_slice(&300i16.to_be_bytes());
        assert_eq!(parse_idx(&b, p).expect("i16").data, IdxData::I16(vec![-2, 300]));

        let mut b = header(0x0D, &[1]);
        b.extend_from_slice(&1.5f32.to_be_bytes());
        let idx = parse_idx(&b, p).expect("f32");
        assert_eq!(idx.data, IdxData::F32(vec![1.5]));
        assert!(idx.into_u8().expect_err("not u8").to_string().contains("f32 elements"));
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let p = Path::new("bad.idx");
        let msg = |b: &[u8]| parse_idx(b, p).expect_err("must fail").to_string();
        assert!(msg(&[0, 0]).contains("too short"));
        assert!(msg(b"PK\x03\x04").contains("not an idx file"));
        assert!(msg(&[0, 0, 0x42, 1, 0, 0, 0, 1, 0]).contains("unknown idx element type 0x42"));
        assert!(msg(&[0, 0, 8, 3, 0, 0]).contains("truncated header"));
        let mut b = header(0x08, &[10]);
        b.extend_from_slice(&[0; 9]);
        assert_eq!(
            msg(&b),
            "bad.idx: truncated: dimensions [10] need 10 bytes of data, file has 9"
        );
        b.extend_from_slice(&[0; 2]);
        assert!(msg(&b).contains("trailing bytes"));
        assert!(msg(&header(0x0E, &[u32::MAX, u32::MAX, u32::MAX])).contains("overflow"));
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let dir = std::env::temp_dir().join(format!("mm-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("x.gz");
        std::fs::write(&file, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2]).expect("write");
        let e = read_idx(&file).expect_err("corrupt").to_string();
        assert!(e.contains("x.gz") && e.contains("gzip"), "{e}");
        std::fs::remove_dir_all(dir).ok();
    }
}
