//! Captions of the synthetic samples: varied templates, synonyms, word-order changes and
//! distractor words over the attributes a caption describes (shape, colour, size, place,
//! number of beeps and a sentiment adjective). A caption never names the pitch.

use mm_data::rng::Rng;

/// What a caption says.
#[derive(Debug, Clone, PartialEq)]
pub struct Described {
    /// Index into the shapes (circle, ring, square, triangle).
    pub shape: usize,
    /// Index into the colours (red, green, blue, yellow).
    pub colour: usize,
    /// Whether the shape is large.
    pub large: bool,
    /// Place on a 3 x 3 grid: row (0 top, 1 middle, 2 bottom) times 3 plus column (0 left,
    /// 1 centre, 2 right).
    pub place: usize,
    /// Number of beeps (1 to 3).
    pub beeps: usize,
    /// Index into the sentiment levels (-1, -0.5, 0, 0.5, 1).
    pub sentiment: usize,
}

/// The sentiment level of each adjective group.
pub const SENTIMENT_LEVELS: [f64; 5] = [-1.0, -0.5, 0.0, 0.5, 1.0];

const SHAPES: [&[&str]; 4] = [
    &["circle", "disc", "dot"],
    &["ring", "hoop", "loop"],
    &["square", "box", "block"],
    &["triangle", "wedge", "delta"],
];
const COLOURS: [&[&str]; 4] = [
    &["red", "crimson", "scarlet"],
    &["green", "emerald", "lime"],
    &["blue", "azure", "navy"],
    &["yellow", "golden", "amber"],
];
const SIZES: [&[&str]; 2] = [&["small", "tiny", "little"], &["large", "big", "huge"]];
const BEEPS: [&[&str]; 3] = [
    &["with a single beep", "with one beep", "beeping once"],
    &["with two beeps", "with a double beep", "beeping twice"],
    &["with three beeps", "with a triple beep", "beeping three times"],
];
const SENTIMENTS: [&[&str]; 5] = [
    &["awful", "terrible", "horrible"],
    &["dull", "boring", "mediocre"],
    &["plain", "ordinary", "simple"],
    &["nice", "pleasant", "good"],
    &["wonderful", "delightful", "fantastic"],
];
const DISTRACTORS: &[&str] = &[
    "honestly",
    "as far as i can tell",
    "in this clip",
    "once again",
    "or so it seems",
    "today",
    "someone said",
    "if you look closely",
];

/// A phrase for a place on the 3 x 3 grid.
fn place_phrase(place: usize, rng: &mut Rng) -> String {
    let (row, col) = (place / 3, place % 3);
    if row == 1 && col == 1 {
        return pick(rng, &["in the centre", "in the middle", "right at the centre"]).to_string();
    }
    let row_word = [pick(rng, &["top", "upper"]), "", pick(rng, &["bottom", "lower"])][row];
    let col_word = ["left", "", "right"][col];
    let words = [row_word, col_word]
        .iter()
        .filter(|w| !w.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let corner = if row != 1 && col != 1 && rng.chance(0.5) { " corner" } else { "" };
    let prep = pick(rng, &["in the", "at the", "near the", "on the"]);
    format!("{prep} {words}{corner}")
}

fn pick<'a>(rng: &mut Rng, words: &[&'a str]) -> &'a str {
    words[rng.below(words.len() as u64) as usize]
}

/// Writes a caption for `d`, choosing template, synonyms and distractors with `rng`.
pub fn caption(d: &Described, rng: &mut Rng) -> String {
    let shape = pick(rng, SHAPES[d.shape]);
    let colour = pick(rng, COLOURS[d.colour]);
    let size = pick(rng, SIZES[usize::from(d.large)]);
    let place = place_phrase(d.place, rng);
    let beeps = pick(rng, BEEPS[d.beeps.clamp(1, 3) - 1]);
    let mood = pick(rng, SENTIMENTS[d.sentiment]);
    let article = if mood.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    let text = match rng.below(5) {
        0 => format!("{article} {mood} {size} {colour} {shape} {place}, {beeps}"),
        1 => format!("{place} there is a {size} {colour} {shape}, {beeps}; it looks {mood}"),
        2 => format!("{beeps}, {article} {mood} {colour} {shape} sits {place}, {size}"),
        3 => format!("{mood} picture: a {shape} in {colour}, {size}, {place}, {beeps}"),
        _ => format!("{place}: {colour} {shape}, {size} and {mood}, {beeps}"),
    };
    if rng.chance(0.5) {
        let distractor = pick(rng, DISTRACTORS);
        if rng.chance(0.5) {
            format!("{distractor}, {text}")
        } else {
            format!("{text}, {distractor}")
        }
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_vary_and_name_every_attribute() {
        let d = Described { shape: 3, colour: 1, large: false, place: 6, beeps: 2, sentiment: 0 };
        let captions: std::collections::BTreeSet<String> =
            (0..200).map(|i| caption(&d, &mut Rng::new(i))).collect();
        assert!(captions.len() > 100, "only {} distinct captions", captions.len());
        for c in &captions {
            assert!(SHAPES[3].iter().any(|w| c.contains(w)), "{c}");
            assert!(COLOURS[1].iter().any(|w| c.contains(w)), "{c}");
            assert!(SIZES[0].iter().any(|w| c.contains(w)), "{c}");
            assert!((c.contains("bottom") || c.contains("lower")) && c.contains("left"), "{c}");
            assert!(BEEPS[1].iter().any(|w| c.contains(w)), "{c}");
            assert!(SENTIMENTS[0].iter().any(|w| c.contains(w)), "{c}");
            let words: Vec<&str> = c.split(|ch: char| !ch.is_alphanumeric()).collect();
            assert!(
                !words.iter().any(|w| ["high", "low", "pitch"].contains(w)),
                "a caption may not name the pitch: {c}"
            );
        }
    }
}
