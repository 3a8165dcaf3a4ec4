//! Element types the library stores and computes in.

/// A tensor's element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// fp8 e4m3fn: max 448, no infinities, NaN 0x7f / 0xff.
    F8E4M3,
    /// fp8 e5m2 (IEEE-like, with infinities).
    F8E5M2,
    /// Two int4 values per byte (see `quant::int4` for the nibble order).
    I4,
    I32,
    U32,
    U8,
}

impl DType {
    /// Bits per element.
    pub fn bits(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 32,
            DType::F16 | DType::BF16 => 16,
            DType::F8E4M3 | DType::F8E5M2 | DType::U8 => 8,
            DType::I4 => 4,
        }
    }
    /// Short lowercase name, as printed in errors and tables.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8_e4m3",
            DType::F8E5M2 => "f8_e5m2",
            DType::I4 => "int4",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::U8 => "u8",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
