package fakefc

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file decodes request bodies the way Firecracker does: with serde_json into Rust structs
// (see model.go for the types). It reproduces serde_json's error messages and their positions
// ("... at line L column C"), because clients and tests see them in 400 responses.
//
// serde_json positions an error in one of two ways. A syntax error, or a type error found while
// reading a token, is placed where the reader stands: the last byte consumed (position) or the
// byte peeked at (peekPosition). An error raised by a visitor, such as "missing field" or
// "unknown field", carries no position; the innermost deserialize call that "fixes" positions
// then gives it the position of the last byte consumed at that moment. Struct, sequence, string,
// number and bool deserialization fix positions; struct keys and enum payloads do not.

// serdeError is a decoding failure with serde_json's wording.
type serdeError struct {
	msg       string
	line, col int
	placed    bool
}

func (e *serdeError) Error() string {
	return fmt.Sprintf("%s at line %d column %d", e.msg, e.line, e.col)
}

// decoder walks one JSON body. pos is the index of the next unread byte.
type decoder struct {
	data  []byte
	pos   int
	depth int
}

// decode deserializes body as t and returns the value normalized to JSON-like Go values
// (map[string]any for structs, []any, string, uint64, int64, float64, bool, nil), ready to be
// re-encoded with encoding/json. Fields absent from the body are absent from the map.
func decode(body []byte, t *rtype) (any, *serdeError) {
	d := &decoder{data: body}
	v, err := d.value(t)
	if err != nil {
		return nil, err
	}
	if _, ok := d.skipSpace(); ok {
		return nil, d.peekErr("trailing characters")
	}
	return v, nil
}

// lineCol returns serde_json's position for index i: the line of byte i-1 and its 1-based
// column (0 at the start of a line).
func (d *decoder) lineCol(i int) (int, int) {
	line, start := 1, 0
	for j := 0; j < i && j < len(d.data); j++ {
		if d.data[j] == '\n' {
			line++
			start = j + 1
		}
	}
	return line, i - start
}

// err places msg at the last byte consumed.
func (d *decoder) err(msg string) *serdeError {
	l, c := d.lineCol(d.pos)
	return &serdeError{msg: msg, line: l, col: c, placed: true}
}

// peekErr places msg at the byte peeked at (the next unread one).
func (d *decoder) peekErr(msg string) *serdeError {
	l, c := d.lineCol(min(len(d.data), d.pos+1))
	return &serdeError{msg: msg, line: l, col: c, placed: true}
}

// unplaced is a visitor error; the caller fixes its position.
func unplaced(format string, args ...any) *serdeError {
	return &serdeError{msg: fmt.Sprintf(format, args...)}
}

// fix gives an unplaced error the position of the last byte consumed.
func (d *decoder) fix(e *serdeError) *serdeError {
	if e != nil && !e.placed {
		e.line, e.col = d.lineCol(d.pos)
		e.placed = true
	}
	return e
}

// skipSpace consumes JSON whitespace and returns the next byte without consuming it.
func (d *decoder) skipSpace() (byte, bool) {
	for d.pos < len(d.data) {
		switch b := d.data[d.pos]; b {
		case ' ', '\n', '\t', '\r':
			d.pos++
		default:
			return b, true
		}
	}
	return 0, false
}

func (d *decoder) next() (byte, bool) {
	if d.pos >= len(d.data) {
		return 0, false
	}
	b := d.data[d.pos]
	d.pos++
	return b, true
}

// ident consumes the rest of a literal (after its first byte).
func (d *decoder) ident(rest string) *serdeError {
	for i := range len(rest) {
		b, ok := d.next()
		if !ok {
			return d.err("EOF while parsing a value")
		}
		if b != rest[i] {
			return d.err("expected ident")
		}
	}
	return nil
}

// value deserializes one value of type t.
func (d *decoder) value(t *rtype) (any, *serdeError) {
	switch t.kind {
	case kindOption:
		b, ok := d.skipSpace()
		if !ok {
			return nil, d.peekErr("EOF while parsing a value")
		}
		if b == 'n' {
			d.pos++
			if err := d.ident("ull"); err != nil {
				return nil, err
			}
			return nil, nil
		}
		return d.value(t.elem)
	case kindStruct:
		return d.structValue(t)
	case kindString:
		return d.stringValue(t)
	case kindBool:
		return d.boolValue(t)
	case kindUint, kindInt:
		return d.numberValue(t)
	case kindEnum:
		return d.enumValue(t)
	case kindSeq:
		return d.seqValue(t)
	case kindAny:
		return d.anyValue()
	case kindUntagged:
		start := d.pos
		if _, err := d.anyValue(); err != nil {
			return nil, err
		}
		raw := d.data[start:d.pos]
		for _, alt := range t.alts {
			if v, err := decode(raw, alt); err == nil {
				return v, nil
			}
		}
		return nil, unplaced("data did not match any variant of untagged enum %s", t.name)
	}
	panic(fmt.Sprintf("fakefc: unknown rtype kind %d", t.kind))
}

func (d *decoder) structValue(t *rtype) (any, *serdeError) {
	b, ok := d.skipSpace()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	var v any
	var err *serdeError
	switch b {
	case '{':
		if err := d.enter(); err != nil {
			return nil, err
		}
		d.pos++
		v, err = d.structMap(t)
		d.depth--
		endErr := d.endMap()
		if err == nil {
			err = endErr
		}
	case '[':
		if err := d.enter(); err != nil {
			return nil, err
		}
		d.pos++
		v, err = d.structSeq(t)
		d.depth--
		endErr := d.endSeq()
		if err == nil {
			err = endErr
		}
	default:
		err = d.invalidType(t.expecting())
	}
	if err != nil {
		return nil, d.fix(err)
	}
	return v, nil
}

// enter guards against the nesting limit serde_json enforces.
func (d *decoder) enter() *serdeError {
	d.depth++
	if d.depth > 128 {
		return d.err("recursion limit exceeded")
	}
	return nil
}

// structMap reads the fields of a struct written as a JSON object; the opening brace has
// been consumed and endMap consumes the closing one.
func (d *decoder) structMap(t *rtype) (any, *serdeError) {
	out := map[string]any{}
	seen := map[string]bool{}
	first := true
	for {
		more, err := d.nextKey(&first)
		if err != nil {
			return nil, err
		}
		if !more {
			break
		}
		d.pos++ // the opening quote
		key, err := d.stringBody()
		if err != nil {
			return nil, err
		}
		f := t.field(key)
		if f == nil && !t.open {
			return nil, unplaced("unknown field `%s`, %s", key, expectedList(t.fieldNames()))
		}
		if f != nil && seen[key] {
			return nil, unplaced("duplicate field `%s`", key)
		}
		if err := d.colon(); err != nil {
			return nil, err
		}
		if f == nil {
			if _, err := d.anyValue(); err != nil {
				return nil, err
			}
			continue
		}
		seen[key] = true
		v, err := d.value(f.typ)
		if err != nil {
			return nil, err
		}
		out[key] = v
	}
	for _, f := range t.fields {
		if !seen[f.name] && f.required {
			return nil, unplaced("missing field `%s`", f.name)
		}
	}
	return out, nil
}

// structSeq reads a struct written as a JSON array, its fields in declaration order, as
// serde's derived visit_seq does.
func (d *decoder) structSeq(t *rtype) (any, *serdeError) {
	out := map[string]any{}
	first := true
	for i, f := range t.fields {
		more, err := d.nextElement(&first)
		if err != nil {
			return nil, err
		}
		if !more {
			if f.required {
				return nil, unplaced("invalid length %d, expected %s with %s", i, t.expecting(), plural(len(t.fields), "element"))
			}
			continue
		}
		v, err := d.value(f.typ)
		if err != nil {
			return nil, err
		}
		out[f.name] = v
	}
	return out, nil
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// nextKey reports whether another key follows in an object, leaving the decoder at its
// opening quote.
func (d *decoder) nextKey(first *bool) (bool, *serdeError) {
	b, ok := d.skipSpace()
	switch {
	case !ok:
		return false, d.peekErr("EOF while parsing an object")
	case b == '}':
		return false, nil
	case b == ',' && !*first:
		d.pos++
		b, ok = d.skipSpace()
	case *first:
		*first = false
	default:
		return false, d.peekErr("expected `,` or `}`")
	}
	switch {
	case !ok:
		return false, d.peekErr("EOF while parsing a value")
	case b == '"':
		return true, nil
	case b == '}':
		return false, d.peekErr("trailing comma")
	}
	return false, d.peekErr("key must be a string")
}

// nextElement reports whether another element follows in an array.
func (d *decoder) nextElement(first *bool) (bool, *serdeError) {
	b, ok := d.skipSpace()
	switch {
	case !ok:
		return false, d.peekErr("EOF while parsing a list")
	case b == ']':
		return false, nil
	case b == ',' && !*first:
		d.pos++
		b, ok = d.skipSpace()
		if ok && b == ']' {
			return false, d.peekErr("trailing comma")
		}
		if !ok {
			return false, d.peekErr("EOF while parsing a value")
		}
		return true, nil
	case *first:
		*first = false
		return true, nil
	}
	return false, d.peekErr("expected `,` or `]`")
}

func (d *decoder) colon() *serdeError {
	b, ok := d.skipSpace()
	switch {
	case !ok:
		return d.peekErr("EOF while parsing an object")
	case b == ':':
		d.pos++
		return nil
	}
	return d.peekErr("expected `:`")
}

func (d *decoder) endMap() *serdeError {
	b, ok := d.skipSpace()
	switch {
	case !ok:
		return d.peekErr("EOF while parsing an object")
	case b == '}':
		d.pos++
		return nil
	case b == ',':
		return d.peekErr("trailing comma")
	}
	return d.peekErr("trailing characters")
}

func (d *decoder) endSeq() *serdeError {
	b, ok := d.skipSpace()
	switch {
	case !ok:
		return d.peekErr("EOF while parsing a list")
	case b == ']':
		d.pos++
		return nil
	case b == ',':
		d.pos++
		if b, ok := d.skipSpace(); ok && b == ']' {
			return d.peekErr("trailing comma")
		}
		return d.peekErr("trailing characters")
	}
	return d.peekErr("trailing characters")
}

func (d *decoder) seqValue(t *rtype) (any, *serdeError) {
	b, ok := d.skipSpace()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	if b != '[' {
		return nil, d.fix(d.invalidType("a sequence"))
	}
	if err := d.enter(); err != nil {
		return nil, err
	}
	d.pos++
	out := []any{}
	first := true
	var err *serdeError
	for {
		var more bool
		more, err = d.nextElement(&first)
		if err != nil || !more {
			break
		}
		var v any
		v, err = d.value(t.elem)
		if err != nil {
			break
		}
		out = append(out, v)
	}
	d.depth--
	endErr := d.endSeq()
	if err == nil {
		err = endErr
	}
	if err != nil {
		return nil, d.fix(err)
	}
	return out, nil
}

func (d *decoder) stringValue(t *rtype) (any, *serdeError) {
	b, ok := d.skipSpace()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	if b != '"' {
		return nil, d.fix(d.invalidType(t.expecting()))
	}
	d.pos++
	s, err := d.stringBody()
	if err != nil {
		return nil, err
	}
	if t.check != nil {
		if msg := t.check(s); msg != "" {
			return nil, d.fix(unplaced("%s", msg))
		}
	}
	if t.late != nil {
		// A parser run by the field's own Deserialize impl: the enclosing struct or
		// sequence places the error.
		if msg := t.late(s); msg != "" {
			return nil, unplaced("%s", msg)
		}
	}
	return s, nil
}

func (d *decoder) boolValue(t *rtype) (any, *serdeError) {
	b, ok := d.skipSpace()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	switch b {
	case 't':
		d.pos++
		if err := d.ident("rue"); err != nil {
			return nil, err
		}
		return true, nil
	case 'f':
		d.pos++
		if err := d.ident("alse"); err != nil {
			return nil, err
		}
		return false, nil
	}
	return nil, d.fix(d.invalidType(t.expecting()))
}

func (d *decoder) numberValue(t *rtype) (any, *serdeError) {
	b, ok := d.skipSpace()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	if b != '-' && (b < '0' || b > '9') {
		return nil, d.fix(d.invalidType(t.expecting()))
	}
	n, err := d.number()
	if err != nil {
		return nil, err
	}
	if n.isFloat {
		return nil, d.fix(unplaced("invalid type: %s, expected %s", n.unexpected(), t.expecting()))
	}
	if t.kind == kindUint {
		if n.neg || n.u > t.max() {
			return nil, d.fix(unplaced("invalid value: %s, expected %s", n.unexpected(), t.expecting()))
		}
		return n.u, nil
	}
	// kindInt: a signed 32-bit integer.
	v := n.signed()
	if (n.neg && n.u > 1<<31) || (!n.neg && n.u > math.MaxInt32) {
		return nil, d.fix(unplaced("invalid value: %s, expected %s", n.unexpected(), t.expecting()))
	}
	return v, nil
}

// enumValue reads a unit-only enum: "Variant", or {"Variant": null}.
func (d *decoder) enumValue(t *rtype) (any, *serdeError) {
	b, ok := d.skipSpace()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	switch b {
	case '"':
		d.pos++
		s, err := d.stringBody()
		if err != nil {
			return nil, err
		}
		if !t.hasVariant(s) {
			return nil, d.fix(unplaced("unknown variant `%s`, %s", s, expectedList(t.variants)))
		}
		return s, nil
	case '{':
		d.pos++
		if _, ok := d.skipSpace(); !ok {
			return nil, d.peekErr("EOF while parsing a value")
		}
		if b, _ := d.skipSpace(); b != '"' {
			return nil, d.fix(d.invalidType("variant identifier"))
		}
		d.pos++
		s, err := d.stringBody()
		if err != nil {
			return nil, err
		}
		if !t.hasVariant(s) {
			return nil, d.fix(unplaced("unknown variant `%s`, %s", s, expectedList(t.variants)))
		}
		if err := d.colon(); err != nil {
			return nil, err
		}
		if b, ok := d.skipSpace(); ok && b == 'n' {
			d.pos++
			if err := d.ident("ull"); err != nil {
				return nil, err
			}
		} else {
			return nil, d.fix(d.invalidType("unit variant"))
		}
		b, ok := d.skipSpace()
		switch {
		case !ok:
			return nil, d.err("EOF while parsing an object")
		case b != '}':
			return nil, d.err("expected value")
		}
		d.pos++
		return s, nil
	}
	return nil, d.peekErr("expected value")
}

// invalidType reads the token at hand to describe it, as serde_json's peek_invalid_type does,
// and returns "invalid type: <token>, expected <exp>" (or a syntax error found on the way).
func (d *decoder) invalidType(exp string) *serdeError {
	b, _ := d.skipSpace()
	var what string
	switch {
	case b == 'n':
		d.pos++
		if err := d.ident("ull"); err != nil {
			return err
		}
		what = "null"
	case b == 't':
		d.pos++
		if err := d.ident("rue"); err != nil {
			return err
		}
		what = "boolean `true`"
	case b == 'f':
		d.pos++
		if err := d.ident("alse"); err != nil {
			return err
		}
		what = "boolean `false`"
	case b == '-' || (b >= '0' && b <= '9'):
		n, err := d.number()
		if err != nil {
			return err
		}
		what = n.unexpected()
	case b == '"':
		d.pos++
		s, err := d.stringBody()
		if err != nil {
			return err
		}
		what = "string " + rustDebugString(s)
	case b == '[':
		what = "sequence"
	case b == '{':
		what = "map"
	default:
		return d.peekErr("expected value")
	}
	return d.fix(unplaced("invalid type: %s, expected %s", what, exp))
}

// anyValue reads and checks any JSON value (serde_json::Value or an ignored field).
func (d *decoder) anyValue() (any, *serdeError) {
	b, ok := d.skipSpace()
	if !ok {
		return nil, d.peekErr("EOF while parsing a value")
	}
	switch {
	case b == 'n':
		d.pos++
		return nil, d.ident("ull")
	case b == 't':
		d.pos++
		return true, d.ident("rue")
	case b == 'f':
		d.pos++
		return false, d.ident("alse")
	case b == '-' || (b >= '0' && b <= '9'):
		n, err := d.number()
		if err != nil {
			return nil, err
		}
		return n.value(), nil
	case b == '"':
		d.pos++
		return d.stringBody()
	case b == '[':
		return d.seqValue(&rtype{kind: kindSeq, elem: anyType})
	case b == '{':
		if err := d.enter(); err != nil {
			return nil, err
		}
		d.pos++
		out := map[string]any{}
		first := true
		var err *serdeError
		for {
			var more bool
			more, err = d.nextKey(&first)
			if err != nil || !more {
				break
			}
			d.pos++
			var k string
			k, err = d.stringBody()
			if err != nil {
				break
			}
			if err = d.colon(); err != nil {
				break
			}
			var v any
			v, err = d.anyValue()
			if err != nil {
				break
			}
			out[k] = v
		}
		d.depth--
		endErr := d.endMap()
		if err == nil {
			err = endErr
		}
		if err != nil {
			return nil, d.fix(err)
		}
		return out, nil
	}
	return nil, d.peekErr("expected value")
}

// stringBody reads a string after its opening quote and consumes the closing one.
func (d *decoder) stringBody() (string, *serdeError) {
	var sb strings.Builder
	for {
		b, ok := d.next()
		if !ok {
			return "", d.err("EOF while parsing a string")
		}
		switch {
		case b == '"':
			s := sb.String()
			if !utf8.ValidString(s) {
				return "", d.err("invalid unicode code point")
			}
			return s, nil
		case b == '\\':
			if err := d.escape(&sb); err != nil {
				return "", err
			}
		case b < 0x20:
			return "", d.err("control character (\\u0000-\\u001F) found while parsing a string")
		default:
			sb.WriteByte(b)
		}
	}
}

func (d *decoder) escape(sb *strings.Builder) *serdeError {
	b, ok := d.next()
	if !ok {
		return d.err("EOF while parsing a string")
	}
	switch b {
	case '"', '\\', '/':
		sb.WriteByte(b)
	case 'b':
		sb.WriteByte('\b')
	case 'f':
		sb.WriteByte('\f')
	case 'n':
		sb.WriteByte('\n')
	case 'r':
		sb.WriteByte('\r')
	case 't':
		sb.WriteByte('\t')
	case 'u':
		r, err := d.hex4()
		if err != nil {
			return err
		}
		if r >= 0xD800 && r <= 0xDBFF {
			// A leading surrogate must be followed by \u and a trailing one.
			if d.pos+1 < len(d.data) && d.data[d.pos] == '\\' && d.data[d.pos+1] == 'u' {
				d.pos += 2
				r2, err := d.hex4()
				if err != nil {
					return err
				}
				if r2 < 0xDC00 || r2 > 0xDFFF {
					return d.err("lone leading surrogate in hex escape")
				}
				sb.WriteRune(0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00))
				return nil
			}
			if d.pos >= len(d.data) {
				return d.err("unexpected end of hex escape")
			}
			return d.err("lone leading surrogate in hex escape")
		}
		if r >= 0xDC00 && r <= 0xDFFF {
			return d.err("lone leading surrogate in hex escape")
		}
		sb.WriteRune(r)
	default:
		return d.err("invalid escape")
	}
	return nil
}

func (d *decoder) hex4() (rune, *serdeError) {
	var r rune
	for range 4 {
		b, ok := d.next()
		if !ok {
			return 0, d.err("EOF while parsing a string")
		}
		var v byte
		switch {
		case b >= '0' && b <= '9':
			v = b - '0'
		case b >= 'a' && b <= 'f':
			v = b - 'a' + 10
		case b >= 'A' && b <= 'F':
			v = b - 'A' + 10
		default:
			return 0, d.err("invalid escape")
		}
		r = r<<4 | rune(v)
	}
	return r, nil
}

// jsonNumber is a parsed JSON number, kept as serde_json keeps it: an unsigned or negative
// integer when it fits in 64 bits, a float otherwise.
type jsonNumber struct {
	neg     bool
	u       uint64 // magnitude of an integer
	isFloat bool
	f       float64
}

func (n jsonNumber) signed() int64 {
	if n.neg {
		return -int64(n.u)
	}
	return int64(n.u)
}

func (n jsonNumber) value() any {
	switch {
	case n.isFloat:
		return n.f
	case n.neg:
		return n.signed()
	}
	return n.u
}

// unexpected describes the number as serde's Unexpected does.
func (n jsonNumber) unexpected() string {
	if n.isFloat {
		return "floating point `" + rustFloat(n.f) + "`"
	}
	if n.neg {
		return "integer `" + strconv.FormatInt(n.signed(), 10) + "`"
	}
	return "integer `" + strconv.FormatUint(n.u, 10) + "`"
}

// number parses a JSON number starting at the current byte.
func (d *decoder) number() (jsonNumber, *serdeError) {
	start := d.pos
	var n jsonNumber
	if d.data[d.pos] == '-' {
		n.neg = true
		d.pos++
	}
	b, ok := d.next()
	if !ok {
		return n, d.err("EOF while parsing a value")
	}
	switch {
	case b == '0':
		if c, ok := d.peekByte(); ok && c >= '0' && c <= '9' {
			return n, d.peekErr("invalid number")
		}
	case b >= '1' && b <= '9':
		d.skipDigits()
	default:
		return n, d.err("invalid number")
	}
	intEnd := d.pos
	float := false
	if c, ok := d.peekByte(); ok && c == '.' {
		float = true
		d.pos++
		if err := d.digitRun(); err != nil {
			return n, err
		}
	}
	if c, ok := d.peekByte(); ok && (c == 'e' || c == 'E') {
		float = true
		d.pos++
		if c, ok := d.peekByte(); ok && (c == '+' || c == '-') {
			d.pos++
		}
		if err := d.digitRun(); err != nil {
			return n, err
		}
	}
	digits := string(d.data[start:intEnd])
	if !float {
		u, err := strconv.ParseUint(strings.TrimPrefix(digits, "-"), 10, 64)
		if err == nil && (!n.neg || u <= 1<<63) {
			if n.neg && u == 0 {
				n.isFloat, n.f = true, math.Copysign(0, -1)
			} else {
				n.u = u
			}
			return n, nil
		}
	}
	f, err := strconv.ParseFloat(string(d.data[start:d.pos]), 64)
	if err != nil && math.IsInf(f, 0) {
		return n, d.err("number out of range")
	}
	n.isFloat, n.f = true, f
	return n, nil
}

// digitRun consumes the digits of a fraction or exponent, at least one.
func (d *decoder) digitRun() *serdeError {
	c, ok := d.peekByte()
	if !ok {
		return d.peekErr("EOF while parsing a value")
	}
	if c < '0' || c > '9' {
		return d.peekErr("invalid number")
	}
	d.skipDigits()
	return nil
}

func (d *decoder) skipDigits() {
	for {
		c, ok := d.peekByte()
		if !ok || c < '0' || c > '9' {
			return
		}
		d.pos++
	}
}

func (d *decoder) peekByte() (byte, bool) {
	if d.pos >= len(d.data) {
		return 0, false
	}
	return d.data[d.pos], true
}

// expectedList phrases the names serde lists after "unknown field" or "unknown variant".
func expectedList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "`" + n + "`"
	}
	switch len(q) {
	case 0:
		return "there are no fields"
	case 1:
		return "expected " + q[0]
	case 2:
		return "expected " + q[0] + " or " + q[1]
	}
	return "expected one of " + strings.Join(q, ", ")
}

// rustFloat formats f as Rust's Debug for f64 does: the shortest representation that round
// trips, with ".0" for integral values and exponent notation outside [1e-4, 1e16).
func rustFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	a := math.Abs(f)
	if a != 0 && (a < 1e-4 || a >= 1e16) {
		s := strconv.FormatFloat(f, 'e', -1, 64) // like 1e+23 or 1.5e-07
		mant, exp, _ := strings.Cut(s, "e")
		e, _ := strconv.Atoi(exp)
		return mant + "e" + strconv.Itoa(e)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

// rustDebugString quotes s as Rust's Debug for str does.
func rustDebugString(s string) string {
	var b bytes.Buffer
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case 0:
			b.WriteString(`\0`)
		default:
			if unicode.IsPrint(r) || r == ' ' {
				b.WriteRune(r)
			} else {
				fmt.Fprintf(&b, `\u{%x}`, r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
