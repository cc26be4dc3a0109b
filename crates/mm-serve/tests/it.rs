//! Integration tests of mm-serve.
