//! A display window of the user's own (`--window CENTER,WIDTH`): CT's brain (40,80), soft tissue
//! (50,350) or lung (-600,1500) window, given in the values the file stores after its rescale
//! (Hounsfield units for CT). It replaces a grayscale DICOM image's VOI (the file's window or VOI
//! LUT table) and a NIfTI volume's display range (or its min-max), applied as DICOM's LINEAR VOI
//! function (PS3.3 C.11.2.1.2), as a viewer applies a window typed into it; MONOCHROME1 and
//! INVERSE are still inverted after it. Colour images are left as they are. A grayscale PNG,
//! TIFF, BMP or JPEG (8 or 16 bits) is windowed on its stored values, which have no rescale: a
//! 12-bit radiograph exported to 16 bits is seen through 2048,4096 in place of its high byte.
//!
//! Or three windows joined by `+`, one for each of the red, green and blue channels (CT's brain,
//! subdural and bone windows, `40,80+80,200+600,2800`, as the RSNA 2019 intracranial haemorrhage
//! entries fed ImageNet backbones): each channel sees what its window shows.

use std::fmt;
use std::str::FromStr;

use dicom_pixeldata::{VoiLutFunction, WindowLevel};
use image::RgbImage;

/// One window's centre and width, in the image's rescaled values.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Level {
    /// The value shown mid-grey.
    center: f64,
    /// The span of values from black to white (at least 1, as LINEAR takes it).
    width: f64,
}

/// The user's window: one for a gray image, or one for each colour channel (red, green, blue).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    channels: [Level; 3],
}

impl Window {
    /// One window, for every channel alike: a gray image.
    fn gray(level: Level) -> Self {
        Window { channels: [level; 3] }
    }

    /// One window a channel: red, green, blue.
    fn channels(levels: [Level; 3]) -> Self {
        Window { channels: levels }
    }

    /// Whether every channel has the same window (the image stays gray).
    pub fn is_gray(self) -> bool {
        self.channels.iter().all(|&level| level == self.channels[0])
    }

    /// `value` through each channel's window to 0..1: DICOM's LINEAR function.
    pub(crate) fn units(self, value: f64) -> [f64; 3] {
        self.channels.map(|level| level.unit(value))
    }

    /// `value` through the first channel's window (a gray window's only one) to 0..1.
    pub(crate) fn unit(self, value: f64) -> f64 {
        self.channels[0].unit(value)
    }

    /// A `width` x `height` grayscale image's `values` (row by row) through the window to RGB8:
    /// the gray replicated, or each channel its own window's; inverted after it where `invert`
    /// (MONOCHROME1), each level rounded half up as a viewer's lookup table rounds. None where
    /// the values do not fill the image.
    pub(crate) fn rgb8(self, values: &[f64], (width, height): (u32, u32), invert: bool) -> Option<RgbImage> {
        let byte = |u: f64| {
            let u = if invert { 1.0 - u.clamp(0.0, 1.0) } else { u.clamp(0.0, 1.0) };
            (u * 255.0 + 0.5).floor() as u8
        };
        let rgb = if self.is_gray() {
            values.iter().flat_map(|&v| [byte(self.unit(v)); 3]).collect()
        } else {
            values.iter().flat_map(|&v| self.units(v).map(byte)).collect()
        };
        RgbImage::from_raw(width, height, rgb)
    }
}

impl Level {
    /// `value` through this window to 0..1: DICOM's LINEAR function.
    fn unit(self, value: f64) -> f64 {
        super::windowed(VoiLutFunction::Linear, WindowLevel { center: self.center, width: self.width }, value)
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parsed =
            text.split_once(',').and_then(|(center, width)| Some((center.trim().parse::<f64>().ok()?, width.trim().parse::<f64>().ok()?)));
        match parsed {
            Some((center, width)) if center.is_finite() && width.is_finite() && width >= 1.0 => Ok(Level { center, width }),
            Some(_) => Err(format!("'{text}': a window's centre must be a number and its width a number from 1 (CENTER,WIDTH: 40,80)")),
            None => Err(format!(
                "'{text}' is not a window: give CENTER,WIDTH in the image's rescaled values (CT brain: 40,80; lung: -600,1500), or three \
                 joined by + for the red, green and blue channels (40,80+80,200+600,2800)"
            )),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.center, self.width)
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let levels: Vec<Level> = text.split('+').map(str::parse).collect::<Result<_, _>>()?;
        match levels[..] {
            [level] => Ok(Window::gray(level)),
            [red, green, blue] => Ok(Window::channels([red, green, blue])),
            _ => Err(format!(
                "'{text}': {} windows; give one (CENTER,WIDTH), or three joined by + for the red, green and blue channels \
                 (40,80+80,200+600,2800)",
                levels.len()
            )),
        }
    }
}

crate::as_text::serde_as_text!(Window);

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_gray() {
            return self.channels[0].fmt(f);
        }
        let [red, green, blue] = self.channels;
        write!(f, "{red}+{green}+{blue}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_they_print_and_map_as_linear_does() {
        for text in ["40,80", "-600,1500", "50.5,350", "40,80+80,200+600,2800", "-600,1500+40,80+40,80"] {
            assert_eq!(text.parse::<Window>().unwrap().to_string(), text);
        }
        let brain = Level { center: 40.0, width: 80.0 };
        assert_eq!(" 40 , 80 ".parse::<Window>(), Ok(Window::gray(brain)));
        assert_eq!("40,80+40,80+40,80".parse::<Window>().map(Window::is_gray), Ok(true));
        for bad in ["40", "40,0.5", "a,80", "40,inf", "", "40,80+80,200", "40,80+80,200+1,2+3,4", "40,80+"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
        assert!("40,80+80,200".parse::<Window>().unwrap_err().contains("2 windows"));
        // LINEAR: c - 0.5 - (w - 1)/2 and below black, c - 0.5 + (w - 1)/2 and above white.
        let window = Window::gray(brain);
        assert_eq!(window.units(0.0), [0.0; 3]);
        assert_eq!(window.units(80.0), [1.0; 3]);
        assert!((window.units(39.5)[0] - 0.5).abs() < 1e-12);
        // Each channel its own: 100 HU is white through the brain window, mid-grey through
        // 100,200, near black through the bone window.
        let window: Window = "40,80+100,200+600,2800".parse().unwrap();
        let [red, green, blue] = window.units(100.0);
        assert_eq!(red, 1.0);
        assert!((green - 100.0 / 199.0).abs() < 1e-12 && blue < 0.35, "{green} {blue}");
    }
}
