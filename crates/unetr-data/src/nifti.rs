//! NIfTI-1 reading and writing (`.nii`, `.nii.gz`; single-file "n+1").
//!
//! Every header field that sizes an allocation is checked first: dimensions, data type, vox_offset and
//! the voxel count against both a memory limit and the bytes the file can hold, so a lying header is an
//! error naming the file, never a panic or an out-of-memory abort.

use crate::error::{ferr, Result};
use flate2::read::GzDecoder;
use std::io::{Read, Write};
use std::path::Path;

/// voxel (i, j, k, 1) -> world (x, y, z) in RAS+ millimetres: the top 3 rows of the 4x4 matrix.
pub type Affine = [[f64; 4]; 3];

/// The header fields we use and keep (so a prediction can be written with its input's geometry).
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Spatial size (i, j, k).
    pub dims: [usize; 3],
    /// Channels (the 4th NIfTI dimension; 1 for 3D volumes).
    pub channels: usize,
    pub pixdim: [f64; 3],
    pub datatype: i16,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub qform_code: i16,
    pub sform_code: i16,
    /// The affine used: sform when sform_code > 0, else qform when qform_code > 0, else pixdim.
    pub affine: Affine,
    pub descrip: String,
}

/// A volume, channel-first [C, i, j, k] with k fastest, as f32.
#[derive(Debug, Clone)]
pub struct Volume {
    pub data: Vec<f32>,
    pub header: Header,
}

impl Volume {
    pub fn shape(&self) -> [usize; 4] {
        let [i, j, k] = self.header.dims;
        [self.header.channels, i, j, k]
    }
    /// Voxel spacing in mm along i, j, k (column norms of the affine).
    pub fn spacing(&self) -> [f64; 3] {
        spacing(&self.header.affine)
    }
    pub fn orientation(&self) -> String {
        orientation(&self.header.affine)
    }
}

pub fn spacing(a: &Affine) -> [f64; 3] {
    [0, 1, 2].map(|c| (0..3).map(|r| a[r][c] * a[r][c]).sum::<f64>().sqrt())
}

/// Axis codes as nibabel's `aff2axcodes`: for each voxel axis, the world direction it points to most.
pub fn orientation(a: &Affine) -> String {
    (0..3)
        .map(|c| {
            let r = (0..3).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs())).unwrap();
            let pos = a[r][c] >= 0.0;
            ["LR", "PA", "IS"][r].chars().nth(pos as usize).unwrap()
        })
        .collect()
}

/// What to do with NaN / Inf voxels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// Refuse the file, saying how many voxels are not finite.
    Fail,
    /// Replace them by this value (a warning says how many).
    Replace(f32),
    /// Keep them (for inspection).
    Keep,
}

/// Limits and policies for reading.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Refuse volumes whose decoded f32 data would exceed this many bytes.
    pub max_bytes: usize,
    pub nonfinite: NonFinite,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { max_bytes: crate::limits::MemoryLimit::DEFAULT.bytes_usize(), nonfinite: NonFinite::Fail }
    }
}

fn apply_nonfinite(path: &Path, mut v: Volume, policy: NonFinite) -> Result<Volume> {
    if policy == NonFinite::Keep {
        return Ok(v);
    }
    let bad = v.data.iter().filter(|x| !x.is_finite()).count();
    match policy {
        _ if bad == 0 => Ok(v),
        NonFinite::Fail => Err(ferr(path, format!("{bad} NaN/Inf voxel(s) (set nonfinite = {{ replace = 0.0 }} to replace them)"))),
        NonFinite::Replace(r) => {
            tracing::warn!("{}: replaced {bad} NaN/Inf voxel(s) by {r}", path.display());
            v.data.iter_mut().filter(|x| !x.is_finite()).for_each(|x| *x = r);
            Ok(v)
        }
        NonFinite::Keep => unreachable!(),
    }
}

struct Raw<'a> {
    b: &'a [u8],
    le: bool,
}

impl Raw<'_> {
    fn i16(&self, o: usize) -> i16 {
        let v = [self.b[o], self.b[o + 1]];
        if self.le { i16::from_le_bytes(v) } else { i16::from_be_bytes(v) }
    }
    fn f32(&self, o: usize) -> f64 {
        let v = self.b[o..o + 4].try_into().unwrap();
        (if self.le { f32::from_le_bytes(v) } else { f32::from_be_bytes(v) }) as f64
    }
}

/// Bytes per voxel of a NIfTI data type, or None when unsupported.
fn type_size(dt: i16) -> Option<usize> {
    Some(match dt {
        2 | 256 => 1,        // uint8, int8
        4 | 512 => 2,        // int16, uint16
        8 | 16 | 768 => 4,   // int32, float32, uint32
        64 | 1024 | 1280 => 8, // float64, int64, uint64
        _ => return None,
    })
}

fn type_name(dt: i16) -> &'static str {
    match dt {
        2 => "uint8",
        256 => "int8",
        4 => "int16",
        512 => "uint16",
        8 => "int32",
        768 => "uint32",
        16 => "float32",
        64 => "float64",
        1024 => "int64",
        1280 => "uint64",
        128 => "rgb24",
        32 => "complex64",
        _ => "unknown",
    }
}

fn qform_affine(r: &Raw, pix: [f64; 3]) -> Affine {
    let (b, c, d) = (r.f32(256), r.f32(260), r.f32(264));
    let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
    let qfac = if r.f32(76) < 0.0 { -1.0 } else { 1.0 };
    let rot = [
        [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
        [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
        [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
    ];
    let s = [pix[0], pix[1], qfac * pix[2]];
    let off = [r.f32(268), r.f32(272), r.f32(276)];
    [0, 1, 2].map(|i| [rot[i][0] * s[0], rot[i][1] * s[1], rot[i][2] * s[2], off[i]])
}

/// Parses and validates a 348-byte NIfTI-1 header. Returns the header, vox_offset and little-endianness.
fn parse_header(path: &Path, b: &[u8]) -> Result<(Header, usize, bool)> {
    if b.len() < 348 {
        return Err(ferr(path, format!("truncated header: {} bytes, NIfTI-1 needs 348", b.len())));
    }
    let le = match (i32::from_le_bytes(b[0..4].try_into().unwrap()), i32::from_be_bytes(b[0..4].try_into().unwrap())) {
        (348, _) => true,
        (_, 348) => false,
        (n, _) if n == 540 || i32::from_be_bytes(b[0..4].try_into().unwrap()) == 540 => {
            return Err(ferr(path, "NIfTI-2 header (540 bytes): only NIfTI-1 is supported"))
        }
        (n, _) => return Err(ferr(path, format!("not a NIfTI-1 file: header size field is {n}, expected 348"))),
    };
    let r = Raw { b, le };
    let magic = &b[344..348];
    if magic != b"n+1\0" {
        if magic == b"ni1\0" {
            return Err(ferr(path, "header/image pair (.hdr/.img) is not supported; convert to a single .nii"));
        }
        return Err(ferr(path, format!("bad NIfTI magic {magic:?}, expected \"n+1\\0\"")));
    }
    let ndim = r.i16(40);
    if !(1..=7).contains(&ndim) {
        return Err(ferr(path, format!("dim[0] = {ndim} is out of range 1..7")));
    }
    let dim: Vec<i64> = (1..=7).map(|i| r.i16(40 + 2 * i) as i64).collect();
    for (i, &d) in dim.iter().enumerate().take(ndim as usize) {
        if d <= 0 {
            return Err(ferr(path, format!("dim[{}] = {d}: dimensions must be positive", i + 1)));
        }
    }
    let used = |i: usize| if i < ndim as usize { dim[i] as usize } else { 1 };
    if (4..ndim as usize).any(|i| dim[i] != 1) {
        return Err(ferr(path, format!("{ndim}-D volume with dims {:?}: only 3D, or 4D with channels last, is supported", &dim[..ndim as usize])));
    }
    let dims = [used(0), used(1), used(2)];
    let channels = used(3);
    let datatype = r.i16(70);
    if type_size(datatype).is_none() {
        return Err(ferr(path, format!("unsupported data type {datatype} ({})", type_name(datatype))));
    }
    let pix = [r.f32(80), r.f32(84), r.f32(88)];
    let vox_offset = r.f32(108);
    if !(vox_offset >= 348.0) || vox_offset.fract() != 0.0 || vox_offset > 1e9 {
        return Err(ferr(path, format!("vox_offset {vox_offset} is invalid (must be an integer >= 348)")));
    }
    let (qform_code, sform_code) = (r.i16(252), r.i16(254));
    let affine = if sform_code > 0 {
        [0, 1, 2].map(|i| [0, 1, 2, 3].map(|j| r.f32(280 + 16 * i + 4 * j)))
    } else if qform_code > 0 {
        qform_affine(&r, pix)
    } else {
        [[pix[0], 0.0, 0.0, 0.0], [0.0, pix[1], 0.0, 0.0], [0.0, 0.0, pix[2], 0.0]]
    };
    if affine.iter().flatten().any(|v| !v.is_finite()) {
        return Err(ferr(path, format!("affine has non-finite entries: {affine:?}")));
    }
    let sp = spacing(&affine);
    if sp.iter().any(|&s| !(s > 0.0) || !s.is_finite()) {
        return Err(ferr(path, format!("zero, negative or NaN voxel spacing {sp:?} (pixdim {pix:?})")));
    }
    let (slope, inter) = (r.f32(112), r.f32(116));
    let descrip = String::from_utf8_lossy(&b[148..228]).trim_end_matches('\0').to_string();
    let h = Header {
        dims,
        channels,
        pixdim: pix,
        datatype,
        scl_slope: if slope.is_finite() { slope } else { 0.0 },
        scl_inter: if inter.is_finite() { inter } else { 0.0 },
        qform_code,
        sform_code,
        affine,
        descrip,
    };
    Ok((h, vox_offset as usize, le))
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// Reads a `.nii` or `.nii.gz` volume.
pub fn read_nifti(path: &Path, opts: &ReadOptions) -> Result<Volume> {
    let file = std::fs::File::open(path).map_err(|e| ferr(path, format!("cannot open: {e}")))?;
    let file_len = file.metadata().map(|m| m.len()).ok();
    let gz = is_gz(path);
    let reader: Box<dyn Read> = if gz { Box::new(GzDecoder::new(std::io::BufReader::new(file))) } else { Box::new(std::io::BufReader::new(file)) };
    read_stream(path, reader, if gz { None } else { file_len }, opts)
}

/// Reads a volume from bytes already in memory (gzip-compressed or not, told by the gzip magic); `name`
/// only labels errors. The fuzz target (`fuzz/`) drives the reader through this.
pub fn read_nifti_bytes(name: &Path, bytes: &[u8], opts: &ReadOptions) -> Result<Volume> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        read_stream(name, Box::new(GzDecoder::new(bytes)), None, opts)
    } else {
        read_stream(name, Box::new(bytes), Some(bytes.len() as u64), opts)
    }
}

/// `raw_len`: the length of an uncompressed source, to refuse lying headers before reading.
fn read_stream(path: &Path, mut reader: Box<dyn Read + '_>, raw_len: Option<u64>, opts: &ReadOptions) -> Result<Volume> {
    let mut head = vec![0u8; 352];
    let got = read_up_to(&mut reader, &mut head).map_err(|e| ferr(path, format!("reading the header: {}", io_msg(&e))))?;
    let (h, vox_offset, le) = parse_header(path, &head[..got])?;
    let nvox = h.dims.iter().chain([&h.channels]).try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| ferr(path, "voxel count overflows"))?;
    let bpv = type_size(h.datatype).unwrap();
    let data_bytes = nvox.checked_mul(bpv).ok_or_else(|| ferr(path, "data size overflows"))?;
    if nvox.saturating_mul(4).saturating_add(data_bytes) > opts.max_bytes {
        return Err(ferr(
            path,
            format!(
                "header dims {:?} x {} channel(s) need {} MiB as f32, over the memory limit of {} MiB (memory_limit in the config, --memory-limit on the command line)",
                h.dims,
                h.channels,
                nvox.saturating_mul(4) >> 20,
                opts.max_bytes >> 20
            ),
        ));
    }
    if let Some(file_len) = raw_len {
        if (vox_offset as u64 + data_bytes as u64) > file_len {
            return Err(ferr(path, format!("file holds {file_len} bytes, but the header needs {} (vox_offset {vox_offset} + {data_bytes} bytes of data): truncated or lying header", vox_offset as u64 + data_bytes as u64)));
        }
    }
    // Skip to vox_offset; the header buffer may already hold the first data bytes (vox_offset 348).
    let prefix = if vox_offset < got {
        head[vox_offset..got].to_vec()
    } else {
        // Stream over the extensions: a huge vox_offset must not become a huge allocation.
        let want = (vox_offset - got) as u64;
        let n = std::io::copy(&mut (&mut reader).take(want), &mut std::io::sink()).map_err(|e| ferr(path, format!("reading extensions: {}", io_msg(&e))))?;
        if n < want {
            return Err(ferr(path, format!("vox_offset {vox_offset} is past the end of the data ({} bytes)", got as u64 + n)));
        }
        Vec::new()
    };
    let v = finish(path, h, le, bpv, data_bytes, nvox, prefix, &mut reader)?;
    apply_nonfinite(path, v, opts.nonfinite)
}

fn io_msg(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => format!("corrupt gzip stream ({e})"),
        std::io::ErrorKind::UnexpectedEof => format!("truncated gzip stream ({e})"),
        _ => e.to_string(),
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
fn finish(path: &Path, h: Header, le: bool, bpv: usize, data_bytes: usize, nvox: usize, prefix: Vec<u8>, reader: &mut dyn Read) -> Result<Volume> {
    let mut raw = prefix;
    raw.truncate(data_bytes);
    // Grow with the data actually present: a header claiming more than a (compressed) file holds fails at
    // the end of the stream without having allocated what it claimed.
    let want = (data_bytes - raw.len()) as u64;
    reader.take(want).read_to_end(&mut raw).map_err(|e| ferr(path, format!("reading voxel data: {}", io_msg(&e))))?;
    if raw.len() < data_bytes {
        return Err(ferr(path, format!("truncated: {} of {data_bytes} bytes of voxel data", raw.len())));
    }
    let conv: fn(&[u8], bool) -> f64 = match (h.datatype, bpv) {
        (2, _) => |b, _| b[0] as f64,
        (256, _) => |b, _| b[0] as i8 as f64,
        (4, _) => |b, le| (if le { i16::from_le_bytes([b[0], b[1]]) } else { i16::from_be_bytes([b[0], b[1]]) }) as f64,
        (512, _) => |b, le| (if le { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) }) as f64,
        (8, _) => |b, le| { let v = b[..4].try_into().unwrap(); (if le { i32::from_le_bytes(v) } else { i32::from_be_bytes(v) }) as f64 },
        (768, _) => |b, le| { let v = b[..4].try_into().unwrap(); (if le { u32::from_le_bytes(v) } else { u32::from_be_bytes(v) }) as f64 },
        (16, _) => |b, le| { let v = b[..4].try_into().unwrap(); (if le { f32::from_le_bytes(v) } else { f32::from_be_bytes(v) }) as f64 },
        (64, _) => |b, le| { let v = b[..8].try_into().unwrap(); if le { f64::from_le_bytes(v) } else { f64::from_be_bytes(v) } },
        (1024, _) => |b, le| { let v = b[..8].try_into().unwrap(); (if le { i64::from_le_bytes(v) } else { i64::from_be_bytes(v) }) as f64 },
        _ => |b, le| { let v = b[..8].try_into().unwrap(); (if le { u64::from_le_bytes(v) } else { u64::from_be_bytes(v) }) as f64 },
    };
    let (slope, inter) = (h.scl_slope, h.scl_inter);
    let scale = slope != 0.0 && !(slope == 1.0 && inter == 0.0);
    let [ni, nj, nk] = h.dims;
    let c = h.channels;
    // File order: i fastest, then j, k, channel. Ours: [c][i][j][k], k fastest.
    let mut data = vec![0f32; nvox];
    for ch in 0..c {
        for k in 0..nk {
            for j in 0..nj {
                for i in 0..ni {
                    let src = (((ch * nk + k) * nj + j) * ni + i) * bpv;
                    let mut v = conv(&raw[src..src + bpv], le);
                    if scale {
                        v = v * slope + inter;
                    }
                    data[((ch * ni + i) * nj + j) * nk + k] = v as f32;
                }
            }
        }
    }
    Ok(Volume { data, header: h })
}

/// Writes a volume as NIfTI-1 (gzip-compressed when the name ends in .gz) atomically: a temporary file in
/// the same folder, then a rename. Data is stored as float32, or uint8 / int16 when `label_type` is set
/// and every value fits. The header keeps the input's sform/qform codes, affine and description.
pub fn write_nifti(path: &Path, v: &Volume, label_type: bool) -> Result<()> {
    let h = &v.header;
    let [ni, nj, nk] = h.dims;
    let c = h.channels;
    if v.data.len() != ni * nj * nk * c {
        return Err(ferr(path, format!("data has {} values, header dims {:?} x {c}", v.data.len(), h.dims)));
    }
    let ints = label_type && v.data.iter().all(|x| x.fract() == 0.0);
    let max = v.data.iter().fold(0f32, |a, &b| a.max(b.abs()));
    let (datatype, bitpix): (i16, i16) = if ints && max <= 255.0 && v.data.iter().all(|&x| x >= 0.0) {
        (2, 8)
    } else if ints && max <= 32767.0 {
        (4, 16)
    } else {
        (16, 32)
    };
    let mut hd = vec![0u8; 352];
    let put_i16 = |b: &mut Vec<u8>, o: usize, x: i16| b[o..o + 2].copy_from_slice(&x.to_le_bytes());
    let put_f32 = |b: &mut Vec<u8>, o: usize, x: f64| b[o..o + 4].copy_from_slice(&(x as f32).to_le_bytes());
    hd[0..4].copy_from_slice(&348i32.to_le_bytes());
    let ndim: i16 = if c > 1 { 4 } else { 3 };
    put_i16(&mut hd, 40, ndim);
    for (i, d) in [ni, nj, nk, c, 1, 1, 1].iter().enumerate() {
        if *d > i16::MAX as usize {
            return Err(ferr(path, format!("dimension {d} too large for NIfTI-1")));
        }
        put_i16(&mut hd, 42 + 2 * i, *d as i16);
    }
    put_i16(&mut hd, 70, datatype);
    put_i16(&mut hd, 72, bitpix);
    let sp = spacing(&h.affine);
    put_f32(&mut hd, 76, 1.0); // qfac
    for i in 0..3 {
        put_f32(&mut hd, 80 + 4 * i, sp[i]);
    }
    put_f32(&mut hd, 80 + 12, 1.0);
    put_f32(&mut hd, 108, 352.0);
    put_f32(&mut hd, 112, 1.0);
    put_f32(&mut hd, 116, 0.0);
    hd[123] = 2 | 8; // mm, seconds
    let desc = h.descrip.as_bytes();
    hd[148..148 + desc.len().min(79)].copy_from_slice(&desc[..desc.len().min(79)]);
    // The affine goes into the sform (code kept from the input, else 2 "aligned"); qform left unset, so
    // readers (nibabel, MONAI) take the sform exactly.
    put_i16(&mut hd, 252, 0);
    put_i16(&mut hd, 254, if h.sform_code > 0 { h.sform_code } else { 2 });
    for i in 0..3 {
        for j in 0..4 {
            put_f32(&mut hd, 280 + 16 * i + 4 * j, h.affine[i][j]);
        }
    }
    hd[344..348].copy_from_slice(b"n+1\0");
    // hd[348..352]: empty extension flag.
    let mut body = Vec::with_capacity(v.data.len() * (bitpix as usize / 8));
    for ch in 0..c {
        for k in 0..nk {
            for j in 0..nj {
                for i in 0..ni {
                    let x = v.data[((ch * ni + i) * nj + j) * nk + k];
                    match datatype {
                        2 => body.push(x as u8),
                        4 => body.extend_from_slice(&(x as i16).to_le_bytes()),
                        _ => body.extend_from_slice(&x.to_le_bytes()),
                    }
                }
            }
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        if is_gz(path) {
            let mut g = flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::new(4));
            g.write_all(&hd)?;
            g.write_all(&body)?;
            g.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        } else {
            let mut w = std::io::BufWriter::new(f);
            w.write_all(&hd)?;
            w.write_all(&body)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ferr(path, format!("writing: {e}")));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ferr(path, format!("renaming the temporary file: {e}"))
    })
}

impl Header {
    /// A header for a new 3D/4D volume with the given affine.
    pub fn new(dims: [usize; 3], channels: usize, affine: Affine) -> Self {
        Self {
            dims,
            channels,
            pixdim: spacing(&affine),
            datatype: 16,
            scl_slope: 1.0,
            scl_inter: 0.0,
            qform_code: 0,
            sform_code: 2,
            affine,
            descrip: String::new(),
        }
    }
}
