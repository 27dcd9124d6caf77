//! A small parser and evaluator for the Go source snippets in
//! `shared/spec/conformance/cases.json` (string/int/bool literals, dotted
//! identifiers, composite literals such as `map[string]string{...}`,
//! `[]string{...}`, `http.Request{...}`, calls, and `+` concatenation).
//!
//! Evaluation is strict: anything it cannot evaluate exactly (an unbound
//! identifier, a call, a non-string operand) is an [`Unevaluable`] error, so
//! the caller can skip and count the case instead of guessing.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// A parsed Go expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Str(String),
    Int(i64),
    Bool(bool),
    Nil,
    /// A (possibly dotted) identifier: `ns`, `confsuite.InfraBackendServiceNameV1`.
    Ident(String),
    /// `TYPE{elems}`; `ty` is empty for elided types (`{ "a", "b" }`).
    Composite {
        ty: String,
        elems: Vec<Elem>,
    },
    /// `func(args)`.
    Call {
        func: String,
        args: Vec<Expr>,
    },
    /// `a + b + ...`.
    Concat(Vec<Expr>),
}

/// An element of a composite literal.
#[derive(Clone, Debug, PartialEq)]
pub enum Elem {
    Keyed(Expr, Expr),
    Value(Expr),
}

/// Why a snippet cannot be evaluated.
#[derive(Clone, Debug, PartialEq)]
pub struct Unevaluable(pub String);

impl fmt::Display for Unevaluable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type R<T> = Result<T, Unevaluable>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(Unevaluable(msg.into()))
}

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Str(String),
    Int(i64),
    Ident(String),
    Punct(char),
}

fn lex(src: &str) -> R<Vec<Tok>> {
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    let Some(&c) = chars.get(i) else { return err(format!("unterminated string in {src:?}")) };
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let Some(&e) = chars.get(i) else { return err("dangling escape") };
                            i += 1;
                            match e {
                                '"' => s.push('"'),
                                '\\' => s.push('\\'),
                                '\'' => s.push('\''),
                                'n' => s.push('\n'),
                                't' => s.push('\t'),
                                'r' => s.push('\r'),
                                '0'..='7' => return err(format!("octal escape in {src:?}")),
                                'x' | 'u' | 'U' => {
                                    let n = match e {
                                        'x' => 2,
                                        'u' => 4,
                                        _ => 8,
                                    };
                                    let hex: String =
                                        chars.get(i..i + n).map(|h| h.iter().collect()).unwrap_or_default();
                                    i += n;
                                    let v = u32::from_str_radix(&hex, 16)
                                        .map_err(|_| Unevaluable(format!("bad \\{e} escape in {src:?}")))?;
                                    if e == 'x' {
                                        // A byte: only ASCII is representable without UTF-8 reassembly.
                                        if v > 0x7f {
                                            return err(format!("non-ASCII \\x escape in {src:?}"));
                                        }
                                    }
                                    s.push(
                                        char::from_u32(v)
                                            .ok_or_else(|| Unevaluable(format!("bad code point in {src:?}")))?,
                                    );
                                }
                                other => return err(format!("unknown escape \\{other} in {src:?}")),
                            }
                        }
                        c => s.push(c),
                    }
                }
                out.push(Tok::Str(s));
            }
            '`' => {
                i += 1;
                let mut s = String::new();
                loop {
                    let Some(&c) = chars.get(i) else { return err(format!("unterminated raw string in {src:?}")) };
                    i += 1;
                    if c == '`' {
                        break;
                    }
                    if c != '\r' {
                        s.push(c);
                    }
                }
                out.push(Tok::Str(s));
            }
            '0'..='9' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let v = text.parse::<i64>().map_err(|_| Unevaluable(format!("unsupported number {text:?}")))?;
                out.push(Tok::Int(v));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            '{' | '}' | '[' | ']' | '(' | ')' | ':' | ',' | '+' | '.' | '*' | '&' | '-' => {
                out.push(Tok::Punct(c));
                i += 1;
            }
            other => return err(format!("unexpected character {other:?} in {src:?}")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    src: String,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn peek_punct(&self, c: char) -> bool {
        self.peek() == Some(&Tok::Punct(c))
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, c: char) -> R<()> {
        match self.next() {
            Some(Tok::Punct(p)) if p == c => Ok(()),
            other => err(format!("expected {c:?}, got {other:?} in {:?}", self.src)),
        }
    }

    /// `a.b.c`
    fn dotted(&mut self, first: String) -> R<String> {
        let mut name = first;
        while self.peek_punct('.') {
            self.pos += 1;
            match self.next() {
                Some(Tok::Ident(n)) => {
                    name.push('.');
                    name.push_str(&n);
                }
                other => return err(format!("expected identifier after '.', got {other:?} in {:?}", self.src)),
            }
        }
        Ok(name)
    }

    /// A type: `[]T`, `map[K]V`, `*T`, `pkg.Name`, `name`.
    fn ty(&mut self) -> R<String> {
        match self.next() {
            Some(Tok::Punct('[')) => {
                self.expect(']')?;
                Ok(format!("[]{}", self.ty()?))
            }
            Some(Tok::Punct('*')) => Ok(format!("*{}", self.ty()?)),
            Some(Tok::Ident(m)) if m == "map" => {
                self.expect('[')?;
                let k = self.ty()?;
                self.expect(']')?;
                let v = self.ty()?;
                Ok(format!("map[{k}]{v}"))
            }
            Some(Tok::Ident(n)) => self.dotted(n),
            other => err(format!("expected a type, got {other:?} in {:?}", self.src)),
        }
    }

    fn expr(&mut self) -> R<Expr> {
        let mut parts = vec![self.unary()?];
        while self.peek_punct('+') {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Expr::Concat(parts) })
    }

    fn unary(&mut self) -> R<Expr> {
        if self.peek_punct('-') {
            self.pos += 1;
            return match self.unary()? {
                Expr::Int(v) => Ok(Expr::Int(-v)),
                other => err(format!("unsupported negation of {other:?} in {:?}", self.src)),
            };
        }
        if self.peek_punct('&') {
            // `&T{...}`: the pointer does not matter for our purposes.
            self.pos += 1;
        }
        self.primary()
    }

    fn primary(&mut self) -> R<Expr> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Str(s))
            }
            Some(Tok::Int(v)) => {
                self.pos += 1;
                Ok(Expr::Int(v))
            }
            Some(Tok::Punct('[')) => {
                let ty = self.ty()?;
                self.composite(ty)
            }
            Some(Tok::Punct('{')) => self.composite(String::new()),
            Some(Tok::Ident(id)) if id == "map" => {
                let ty = self.ty()?;
                self.composite(ty)
            }
            Some(Tok::Ident(id)) => {
                self.pos += 1;
                match id.as_str() {
                    "true" => return Ok(Expr::Bool(true)),
                    "false" => return Ok(Expr::Bool(false)),
                    "nil" => return Ok(Expr::Nil),
                    _ => {}
                }
                let name = self.dotted(id)?;
                if self.peek_punct('{') {
                    return self.composite(name);
                }
                if self.peek_punct('(') {
                    self.pos += 1;
                    let mut args = Vec::new();
                    while !self.peek_punct(')') {
                        args.push(self.expr()?);
                        if self.peek_punct(',') {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                    self.expect(')')?;
                    return Ok(Expr::Call { func: name, args });
                }
                Ok(Expr::Ident(name))
            }
            other => err(format!("unexpected token {other:?} in {:?}", self.src)),
        }
    }

    fn composite(&mut self, ty: String) -> R<Expr> {
        self.expect('{')?;
        let mut elems = Vec::new();
        while !self.peek_punct('}') {
            let first = self.expr()?;
            if self.peek_punct(':') {
                self.pos += 1;
                let v = self.expr()?;
                elems.push(Elem::Keyed(first, v));
            } else {
                elems.push(Elem::Value(first));
            }
            if self.peek_punct(',') {
                self.pos += 1;
            } else {
                break;
            }
        }
        self.expect('}')?;
        Ok(Expr::Composite { ty, elems })
    }
}

/// Parses one Go expression; trailing tokens are an error.
pub fn parse(src: &str) -> R<Expr> {
    let mut p = Parser { toks: lex(src)?, pos: 0, src: src.to_string() };
    let e = p.expr()?;
    if p.pos != p.toks.len() {
        return err(format!("trailing tokens after expression in {src:?}"));
    }
    Ok(e)
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

/// Identifier bindings (constants and loop variables).
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub vars: HashMap<String, String>,
}

impl Env {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }
}

impl Expr {
    /// Every identifier the expression refers to (not struct field keys).
    pub fn idents(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Ident(n) => {
                out.insert(n.clone());
            }
            Expr::Composite { elems, .. } => {
                for e in elems {
                    match e {
                        // A bare identifier key is a struct field name.
                        Elem::Keyed(Expr::Ident(_), v) => v.idents(out),
                        Elem::Keyed(k, v) => {
                            k.idents(out);
                            v.idents(out);
                        }
                        Elem::Value(v) => v.idents(out),
                    }
                }
            }
            Expr::Call { args, .. } => args.iter().for_each(|a| a.idents(out)),
            Expr::Concat(parts) => parts.iter().for_each(|p| p.idents(out)),
            Expr::Str(_) | Expr::Int(_) | Expr::Bool(_) | Expr::Nil => {}
        }
    }

    /// A string value.
    pub fn string(&self, env: &Env) -> R<String> {
        match self {
            Expr::Str(s) => Ok(s.clone()),
            Expr::Ident(n) => env.vars.get(n).cloned().ok_or_else(|| Unevaluable(format!("unbound identifier {n}"))),
            Expr::Concat(parts) => parts.iter().map(|p| p.string(env)).collect::<R<Vec<_>>>().map(|v| v.concat()),
            other => err(format!("not a string: {other:?}")),
        }
    }

    /// An integer value.
    pub fn int(&self, env: &Env) -> R<i64> {
        match self {
            Expr::Int(v) => Ok(*v),
            Expr::Ident(n) => env
                .vars
                .get(n)
                .ok_or_else(|| Unevaluable(format!("unbound identifier {n}")))?
                .parse()
                .map_err(|_| Unevaluable(format!("{n} is not an integer"))),
            other => err(format!("not an integer: {other:?}")),
        }
    }

    /// A bool value.
    pub fn boolean(&self) -> R<bool> {
        match self {
            Expr::Bool(b) => Ok(*b),
            other => err(format!("not a bool: {other:?}")),
        }
    }

    /// `map[string]string{...}` (or `nil`) as ordered pairs.
    pub fn string_map(&self, env: &Env) -> R<Vec<(String, String)>> {
        match self {
            Expr::Nil => Ok(Vec::new()),
            Expr::Composite { ty, elems } if ty == "map[string]string" => elems
                .iter()
                .map(|e| match e {
                    Elem::Keyed(k, v) => Ok((k.string(env)?, v.string(env)?)),
                    Elem::Value(v) => err(format!("map element without key: {v:?}")),
                })
                .collect(),
            other => err(format!("not a map[string]string: {other:?}")),
        }
    }

    /// `[]string{...}` (or `nil`).
    pub fn string_list(&self, env: &Env) -> R<Vec<String>> {
        match self {
            Expr::Nil => Ok(Vec::new()),
            Expr::Composite { ty, elems } if ty == "[]string" => elems
                .iter()
                .map(|e| match e {
                    Elem::Value(v) => v.string(env),
                    Elem::Keyed(..) => err("keyed element in []string"),
                })
                .collect(),
            other => err(format!("not a []string: {other:?}")),
        }
    }

    /// `[]int{...}`.
    pub fn int_list(&self, env: &Env) -> R<Vec<i64>> {
        match self {
            Expr::Composite { ty, elems } if ty == "[]int" => elems
                .iter()
                .map(|e| match e {
                    Elem::Value(v) => v.int(env),
                    Elem::Keyed(..) => err("keyed element in []int"),
                })
                .collect(),
            other => err(format!("not a []int: {other:?}")),
        }
    }

    /// The fields of a struct literal of type `ty`: field name -> expression.
    pub fn struct_fields(&self, want_ty: &str) -> R<Vec<(String, Expr)>> {
        match self {
            Expr::Composite { ty, elems } if ty == want_ty => elems
                .iter()
                .map(|e| match e {
                    Elem::Keyed(Expr::Ident(k), v) => Ok((k.clone(), v.clone())),
                    other => err(format!("positional or non-field element in {want_ty}: {other:?}")),
                })
                .collect(),
            other => err(format!("not a {want_ty} literal: {other:?}")),
        }
    }
}
