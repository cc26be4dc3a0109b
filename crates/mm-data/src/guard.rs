//! Panics of a library call turned into errors: the one place where mm catches unwinding.
//!
//! Two libraries below mm report some failures by panicking: symphonia on a few malformed files
//! (an `unreachable!` in its ID3v2 reader), and `tch`, whose infallible tensor methods unwrap
//! libtorch's C++ exception (a shape that does not fit, a kernel missing for a dtype on this
//! processor). [`catch`] runs such a call and returns the panic's message as an error instead,
//! with nothing printed: a panic hook, installed once and chained to the one before it, stays
//! quiet for panics inside `catch` (on this thread) and passes every other panic on.
//!
//! A panic raised inside a [`Part`] scope remembers the innermost part's name, so that an error
//! can say which piece of a model failed even though the scope has unwound when the error is
//! built ([`Caught::part`]).
//!
//! ```
//! use mm_data::guard::{catch, Part};
//!
//! let caught = catch(|| {
//!     let _part = Part::enter("image encoder");
//!     let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
//!     a.matmul(&a) // [2, 3] x [2, 3]: libtorch refuses, tch panics
//! })
//! .unwrap_err();
//! assert_eq!(caught.part.as_deref(), Some("image encoder"));
//! assert!(caught.message.contains("cannot be multiplied"), "{}", caught.message);
//! // The answer ends at libtorch's message: its C++ stack is left out.
//! assert!(!caught.message.contains("Exception raised from"));
//! assert_eq!(catch(|| 2 + 2).unwrap(), 4);
//! ```

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};

thread_local! {
    /// Depth of `catch` calls on this thread.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The named parts entered on this thread, innermost last.
    static PARTS: RefCell<Vec<Cow<'static, str>>> = const { RefCell::new(Vec::new()) };
    /// The innermost part when this thread last panicked inside `catch`.
    static PANIC_PART: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A panic caught by [`catch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caught {
    /// The panic's message, cut to what a user can act on: tch's `Result::unwrap()` wrapper
    /// and libtorch's C++ stack (`Exception raised from ...`) are left out.
    pub message: String,
    /// The innermost [`Part`] that was running when the panic happened.
    pub part: Option<String>,
    /// libtorch's C++ stack, kept only when `RUST_BACKTRACE` is set (and not `0`).
    pub stack: Option<String>,
}

impl Caught {
    /// The stack as the lines that end a report (empty without one).
    pub fn stack_lines(&self) -> String {
        match &self.stack {
            Some(stack) => {
                format!("\nlibtorch's C++ stack (shown because RUST_BACKTRACE is set):\n{stack}")
            }
            None => String::new(),
        }
    }
}

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.part {
            Some(part) => write!(f, "{} (in the {part})", self.message)?,
            None => f.write_str(&self.message)?,
        }
        f.write_str(&self.stack_lines())
    }
}

/// A named piece of work (an encoder, the fusion, a head) for the errors of [`catch`]; the name
/// is current from `enter` until the value is dropped.
#[derive(Debug)]
pub struct Part {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Part {
    /// Enters the part `name` on this thread (`"image encoder"`, `format!("{name} head")`).
    pub fn enter(name: impl Into<Cow<'static, str>>) -> Part {
        let name = name.into();
        PARTS.with(|p| p.borrow_mut().push(name));
        Part { _not_send: std::marker::PhantomData }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        PARTS.with(|p| {
            p.borrow_mut().pop();
        });
    }
}

/// Runs `call`, turning a panic inside it into a [`Caught`] (see the module documentation).
/// Nested calls are fine; the innermost one that sees the panic reports it.
pub fn catch<T>(call: impl FnOnce() -> T) -> Result<T, Caught> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) == 0 {
                previous(info);
            } else {
                let part = PARTS.with(|p| p.borrow().last().map(|s| s.to_string()));
                PANIC_PART.with(|p| *p.borrow_mut() = part);
            }
        }));
    });
    DEPTH.with(|d| d.set(d.get() + 1));
    let parts = PARTS.with(|p| p.borrow().len());
    let result = panic::catch_unwind(AssertUnwindSafe(call));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| {
        // Parts entered inside `call` were dropped while unwinding; this keeps the stack right
        // even for a part leaked with `mem::forget`.
        PARTS.with(|p| p.borrow_mut().truncate(parts));
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        Caught {
            message: plain_message(&message),
            part: PANIC_PART.with(|p| p.borrow_mut().take()),
            stack: cpp_stack(&message).filter(|_| backtrace_wanted()),
        }
    })
}

/// Whether the user asked for stacks (`RUST_BACKTRACE` set, and not `0`).
fn backtrace_wanted() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// libtorch's C++ stack in a tch panic message (from `Exception raised from ...`), with its
/// escaped newlines restored; `None` when the message has none.
pub fn cpp_stack(message: &str) -> Option<String> {
    let at = message.find("Exception raised from")?;
    let rest = &message[at..];
    let rest = rest.strip_suffix("\")").unwrap_or(rest);
    Some(rest.replace("\\n", "\n").replace("\\\"", "\"").trim_end().to_string())
}

/// The part of a panic message a user can act on. tch's panics read
/// ``called `Result::unwrap()` on an `Err` value: Torch("MESSAGE\nException raised from ...")``;
/// this returns `MESSAGE`, with escaped newlines and quotes restored, on one line.
pub fn plain_message(message: &str) -> String {
    let inner = match message.find("Torch(\"") {
        Some(at) => {
            let rest = &message[at + "Torch(\"".len()..];
            let rest = rest.strip_suffix("\")").unwrap_or(rest);
            rest.replace("\\n", "\n").replace("\\\"", "\"").replace("\\'", "'")
        }
        None => message.to_string(),
    };
    let cut = inner.find("Exception raised from").unwrap_or(inner.len());
    let text = inner[..cut].trim();
    // libtorch sometimes puts the call site on its own line first; keep the message lines.
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        "no message".to_string()
    } else {
        lines.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tch_messages_lose_the_wrapper_and_the_stack() {
        let raw = "called `Result::unwrap()` on an `Err` value: Torch(\"could not create a primitive descriptor for the LSTM forward propagation primitive.\\nException raised from lstm at /pytorch/aten/src/ATen/native/mkldnn/RNN.cpp:301 (most recent call first):\\nframe #0: c10::Error::Error\")";
        assert_eq!(
            plain_message(raw),
            "could not create a primitive descriptor for the LSTM forward propagation primitive."
        );
        assert_eq!(plain_message("index out of bounds"), "index out of bounds");
        // The stack is kept apart, for RUST_BACKTRACE=1.
        let stack = cpp_stack(raw).expect("a stack");
        assert!(
            stack.starts_with("Exception raised from lstm at ")
                && stack.ends_with("frame #0: c10::Error::Error"),
            "{stack}"
        );
        assert_eq!(stack.lines().count(), 2);
        assert_eq!(cpp_stack("index out of bounds"), None);
    }

    #[test]
    fn parts_name_the_innermost_scope_at_the_panic_and_unwind() {
        let caught = catch(|| {
            let _outer = Part::enter("model");
            {
                let _done = Part::enter("text encoder");
            }
            let _inner = Part::enter("fusion");
            panic!("boom");
        })
        .expect_err("a panic");
        assert_eq!(
            caught,
            Caught { message: "boom".into(), part: Some("fusion".into()), stack: None }
        );
        assert_eq!(caught.to_string(), "boom (in the fusion)");
        assert!(PARTS.with(|p| p.borrow().is_empty()));
        // A panic outside any part names none, even after one that had a part.
        let caught = catch(|| panic!("{}", 7)).expect_err("a panic");
        assert_eq!(caught.part, None);
        assert_eq!(caught.message, "7");
    }

    #[test]
    fn nested_catches_answer_at_the_innermost() {
        let outer = catch(|| catch(|| panic!("inner")).map_err(|c| c.message));
        assert_eq!(outer, Ok(Err("inner".to_string())));
    }
}
