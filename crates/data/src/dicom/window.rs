//! A display window of the user's own (`--window CENTER,WIDTH`): CT's brain (40,80), soft tissue
//! (50,350) or lung (-600,1500) window, given in the values the file stores after its rescale
//! (Hounsfield units for CT). It replaces a grayscale DICOM image's VOI (the file's window or VOI
//! LUT table) and a NIfTI volume's display range (or its min-max), applied as DICOM's LINEAR VOI
//! function (PS3.3 C.11.2.1.2), as a viewer applies a window typed into it; MONOCHROME1 and
//! INVERSE are still inverted after it. Colour images are left as they are.

use std::fmt;
use std::str::FromStr;

use dicom_pixeldata::{VoiLutFunction, WindowLevel};

/// A window's centre and width, in the image's rescaled values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    /// The value shown mid-grey.
    pub center: f64,
    /// The span of values from black to white (at least 1, as LINEAR takes it).
    pub width: f64,
}

impl Window {
    /// `value` through the window to 0..1: DICOM's LINEAR function.
    pub(crate) fn unit(self, value: f64) -> f64 {
        super::windowed(VoiLutFunction::Linear, WindowLevel { center: self.center, width: self.width }, value)
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed =
            text.split_once(',').and_then(|(center, width)| Some((center.trim().parse::<f64>().ok()?, width.trim().parse::<f64>().ok()?)));
        match parsed {
            Some((center, width)) if center.is_finite() && width.is_finite() && width >= 1.0 => Ok(Window { center, width }),
            Some(_) => Err(format!("'{text}': a window's centre must be a number and its width a number from 1 (CENTER,WIDTH: 40,80)")),
            None => Err(format!(
                "'{text}' is not a window: give CENTER,WIDTH in the image's rescaled values (CT brain: 40,80; lung: -600,1500)"
            )),
        }
    }
}

impl TryFrom<String> for Window {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Window> for String {
    fn from(window: Window) -> String {
        window.to_string()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.center, self.width)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_they_print_and_map_as_linear_does() {
        for text in ["40,80", "-600,1500", "50.5,350"] {
            assert_eq!(text.parse::<Window>().unwrap().to_string(), text);
        }
        assert_eq!(" 40 , 80 ".parse::<Window>(), Ok(Window { center: 40.0, width: 80.0 }));
        for bad in ["40", "40,0.5", "a,80", "40,inf", ""] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
        // LINEAR: c - 0.5 - (w - 1)/2 and below black, c - 0.5 + (w - 1)/2 and above white.
        let window = Window { center: 40.0, width: 80.0 };
        assert_eq!(window.unit(0.0), 0.0);
        assert_eq!(window.unit(80.0), 1.0);
        assert!((window.unit(39.5) - 0.5).abs() < 1e-12);
    }
}
