//! A contact sheet for people who review edits by eye: references | input with the mask outlined |
//! outputs, each output labelled with its identity score, and each image whose face the worker found
//! labelled with the detector's score (a turned target is shown upright, as the model saw it).

use image::{Rgb, RgbImage};

use crate::job::FaceFound;
use crate::pipeline::face::{self, CropRect};
use crate::pipeline::image::{encode, ImageError, OutputFormat};
use crate::pipeline::inpaint::{EditInput, EditOutput};

const TILE: u32 = 160;
const GAP: u32 = 8;
const LABEL: u32 = 24;
const MASK_COLOUR: Rgb<u8> = Rgb([255, 48, 48]);

/// 3x5 bitmaps of the characters a score needs, one row per u8 (3 low bits, MSB left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        _ => [0; 5],
    }
}

fn draw_text(sheet: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32) {
    for (i, c) in text.chars().enumerate() {
        let ox = x + i as u32 * 4 * scale;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3u32 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (ox + col * scale + dx, y + row as u32 * scale + dy);
                            if px < sheet.width() && py < sheet.height() {
                                sheet.put_pixel(px, py, Rgb([20, 20, 20]));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn square_of(image: &RgbImage, rect: Option<CropRect>) -> RgbImage {
    let rect = rect.unwrap_or_else(|| {
        let side = image.width().min(image.height());
        CropRect {
            x: (image.width() - side) / 2,
            y: (image.height() - side) / 2,
            size: side,
        }
    });
    face::crop_resize(image, rect, TILE)
}

fn place(sheet: &mut RgbImage, tile: &RgbImage, column: u32) {
    let x0 = GAP + column * (TILE + GAP);
    for (x, y, p) in tile.enumerate_pixels() {
        sheet.put_pixel(x0 + x, GAP + y, *p);
    }
}

/// Writes `text` under the tile of `column`.
fn label(sheet: &mut RgbImage, column: u32, text: &str) {
    let x = GAP + column * (TILE + GAP) + 4;
    draw_text(sheet, text, x, GAP + TILE + 4, 3);
}

/// Renders the sheet as PNG bytes; `faces` are the result's faces found (labels under their images).
pub fn render(
    input: &EditInput,
    output: &EditOutput,
    faces: &[FaceFound],
) -> Result<Vec<u8>, ImageError> {
    let score = |image: &str| {
        faces
            .iter()
            .find(|f| f.image == image)
            .map(|f| format!("{:.3}", f.score))
    };
    let columns = (input.references.len() + 1 + output.images.len()) as u32;
    let mut sheet = RgbImage::from_pixel(
        GAP + columns * (TILE + GAP),
        GAP + TILE + LABEL + GAP,
        Rgb([255, 255, 255]),
    );
    let mut column = 0;
    for (reference, face_box) in &input.references {
        let rect = face_box
            .and_then(|b| face::crop_rect(b, 0.4, reference.width(), reference.height()).ok());
        place(&mut sheet, &square_of(reference, rect), column);
        if let Some(text) = score(&format!("identity.references[{column}]")) {
            label(&mut sheet, column, &text);
        }
        column += 1;
    }
    // The input crop with the mask's edge drawn on it.
    let mut target = if input.target_roll == 0.0 {
        square_of(&input.target, Some(output.crop_rect))
    } else {
        let up = face::upright(&input.target, output.crop_rect, input.target_roll);
        square_of(&up, None)
    };
    let res = output.mask.size();
    let inside = |x: i64, y: i64| -> bool {
        let (mx, my) = (x * res as i64 / TILE as i64, y * res as i64 / TILE as i64);
        (0..res as i64).contains(&mx)
            && (0..res as i64).contains(&my)
            && output.mask.get(mx as u32, my as u32)
    };
    for y in 0..TILE as i64 {
        for x in 0..TILE as i64 {
            let edge = inside(x, y)
                && [(-1, 0), (1, 0), (0, -1), (0, 1)]
                    .iter()
                    .any(|(dx, dy)| !inside(x + dx, y + dy));
            if edge {
                target.put_pixel(x as u32, y as u32, MASK_COLOUR);
            }
        }
    }
    place(&mut sheet, &target, column);
    if let Some(text) = score("target") {
        label(&mut sheet, column, &text);
    }
    column += 1;
    for edited in &output.images {
        place(
            &mut sheet,
            &square_of(&edited.image, Some(output.crop_rect)),
            column,
        );
        label(&mut sheet, column, &format!("{:.3}", edited.identity_score));
        column += 1;
    }
    encode(&sheet, OutputFormat::Png)
}
