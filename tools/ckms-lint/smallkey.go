package main

// The small-private-key lint, made cheap enough to run on every certificate.
//
// zlint's community lint e_ecdsa_small_private_key reports an ECDSA public key whose private
// scalar d (or its negation) is at most 2^16: anyone can recover such a key. It searches with
// baby-step giant-step over crypto/elliptic's big.Int API, which costs ~120 µs per P-256
// certificate, a third of all lints together. smallKeyCheck is the same search (same bound,
// same answer, same lint name and source in the findings) over filippo.io/nistec's points with a
// baby-step table eight times larger and both signs searched at once, so a certificate takes two
// point additions. The
// helper runs it in place of zlint's copy of the lint (registry() excludes that one), and
// smallkey_test.go checks both give the same result on small, boundary, negated and random keys.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"

	"filippo.io/nistec"
	"github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3/lint"
	"github.com/zmap/zlint/v3/lints/community"
)

// smallKeyLintName is the zlint lint this check stands in for.
const smallKeyLintName = "e_ecdsa_small_private_key"

// smallKeyBits is zlint's default bound for that lint (2^16); a test pins it to zlint's.
const smallKeyBits = 16

// babySteps is the size of the table of j*G, j = 1..babySteps, per curve: built once per curve
// on first use, in the background (~0.1 s for P-256), it leaves one giant step each way per certificate.
const babySteps = 1 << 15

// point is what the search needs of a nistec point type (P224Point, P256Point, ...).
type point[T any] interface {
	*T
	SetGenerator() *T
	Set(*T) *T
	SetBytes([]byte) (*T, error)
	Add(*T, *T) *T
	Bytes() []byte
	BytesX() ([]byte, error)
	ScalarBaseMult([]byte) (*T, error)
}

// smallKeyTable is one curve's baby steps: the low 64 bits of x(j*G) -> j. A collision of the low
// bits can only propose a candidate, which is verified by a scalar multiplication.
type smallKeyTable[T any, P point[T]] struct {
	once       sync.Once
	ready      atomic.Bool // set once the table is built; until then zlint's own search answers
	logByX     map[uint64]uint32
	giantStep  P // (2*babySteps+1)*G: one giant step up
	giantStepN P // and its negation, one step down
	byteLen    int
	newPoint   func() P // nistec's constructor: a zero value is not a point
}

// build fills the table (once; callers after the first wait for it).
func (t *smallKeyTable[T, P]) build() {
	t.once.Do(func() {
		defer t.ready.Store(true)
		t.logByX = make(map[uint64]uint32, babySteps)
		g := P(t.newPoint().SetGenerator())
		acc := P(t.newPoint().Set(g))
		for j := uint32(1); j <= babySteps; j++ {
			x, err := acc.BytesX()
			if err == nil {
				t.logByX[binary.BigEndian.Uint64(x[len(x)-8:])] = j
			}
			t.byteLen = len(x)
			acc.Add(acc, g)
		}
		stride := big.NewInt(2*babySteps + 1)
		t.giantStep = t.scalarBase(stride)
		neg, err := t.negate(t.giantStep)
		if err != nil {
			panic(err) // cannot happen: stride*G is a finite point
		}
		t.giantStepN = neg
	})
}

// find returns d with 0 < d <= 2^smallKeyBits and pub = d*G or pub = -d*G, or nil.
//
// Both signs at once: d*G and -d*G share their x coordinate, so it is enough to find a small d with
// x(d*G) = x(pub). The giant steps go both ways from pub, pub - i*S and pub + i*S (S = stride*G):
// a baby step j with the same x means pub = ±(i*stride ± j)*G. Each candidate is checked by
// multiplying it out, so a clash of the table's 64-bit keys is harmless.
func (t *smallKeyTable[T, P]) find(encoded []byte) (*big.Int, error) {
	if !t.ready.Load() {
		// The first certificate of a curve starts the build in the background and does not wait for
		// it (a new helper's first lint stays fast); zlint's own search answers until it is done.
		go t.build()
		return nil, errTableNotReady
	}
	q, err := t.newPoint().SetBytes(encoded)
	if err != nil {
		return nil, err
	}
	pub := P(q)
	wantX := encoded[1 : 1+(len(encoded)-1)/2] // the uncompressed encoding's x: no inversion needed
	const limit = int64(1) << smallKeyBits
	stride := int64(2*babySteps + 1)
	down, up := P(t.newPoint().Set(pub)), P(t.newPoint().Set(pub))
	// Step i finds d in [i*stride - babySteps, i*stride + babySteps]; stop once that is past limit.
	for i := int64(0); i*stride-babySteps <= limit; i++ {
		for _, p := range []P{down, up} {
			x, err := wantX, error(nil)
			if i > 0 {
				x, err = p.BytesX()
			}
			if err != nil { // the point at infinity: pub = ±i*stride*G
				if d := i * stride; d > 0 && d <= limit {
					return big.NewInt(d), nil
				}
				continue
			}
			if j, ok := t.logByX[binary.BigEndian.Uint64(x[len(x)-8:])]; ok {
				for _, d := range []int64{i*stride + int64(j), i*stride - int64(j)} {
					if d > 0 && d <= limit && t.hasX(d, wantX) {
						return big.NewInt(d), nil
					}
				}
			}
			if i == 0 {
				break // pub - 0*S is pub + 0*S
			}
		}
		down.Add(down, t.giantStepN)
		up.Add(up, t.giantStep)
	}
	return nil, nil
}

// hasX reports whether d*G has the x coordinate x (so d*G is pub or -pub).
func (t *smallKeyTable[T, P]) hasX(d int64, x []byte) bool {
	got, err := t.scalarBase(big.NewInt(d)).BytesX()
	return err == nil && string(got) == string(x)
}

func (t *smallKeyTable[T, P]) scalarBase(d *big.Int) P {
	scalar := make([]byte, t.byteLen)
	d.FillBytes(scalar)
	q, err := t.newPoint().ScalarBaseMult(scalar)
	if err != nil {
		panic(err) // d is below the group order
	}
	return P(q)
}

// negate returns -q from its uncompressed encoding (y -> p - y); infinity is an error.
func (t *smallKeyTable[T, P]) negate(q P) (P, error) {
	b := q.Bytes()
	if len(b) == 1 {
		return nil, fmt.Errorf("the point at infinity")
	}
	n := (len(b) - 1) / 2
	var params *elliptic.CurveParams
	switch n {
	case 28:
		params = elliptic.P224().Params()
	case 32:
		params = elliptic.P256().Params()
	case 48:
		params = elliptic.P384().Params()
	case 66:
		params = elliptic.P521().Params()
	}
	y := new(big.Int).SetBytes(b[1+n:])
	y.Sub(params.P, y).Mod(y, params.P)
	out := append([]byte{}, b[:1+n]...)
	out = append(out, y.FillBytes(make([]byte, n))...)
	q2, err := t.newPoint().SetBytes(out)
	return P(q2), err
}

// smallKeyTables holds one lazily built table per named curve the CA may see.
type smallKeyTables struct {
	p224 smallKeyTable[nistec.P224Point, *nistec.P224Point]
	p256 smallKeyTable[nistec.P256Point, *nistec.P256Point]
	p384 smallKeyTable[nistec.P384Point, *nistec.P384Point]
	p521 smallKeyTable[nistec.P521Point, *nistec.P521Point]
}

func newSmallKeyTables() *smallKeyTables {
	s := &smallKeyTables{}
	s.p224.newPoint = nistec.NewP224Point
	s.p256.newPoint = nistec.NewP256Point
	s.p384.newPoint = nistec.NewP384Point
	s.p521.newPoint = nistec.NewP521Point
	return s
}

// smallDiscreteLog is the search for one public key; ok is false for a curve it cannot search.
func (s *smallKeyTables) smallDiscreteLog(pub *ecdsa.PublicKey) (d *big.Int, ok bool, err error) {
	//nolint:staticcheck // Marshal is the uncompressed point encoding nistec reads
	encoded := elliptic.Marshal(pub.Curve, pub.X, pub.Y)
	switch pub.Curve.Params().Name {
	case "P-224":
		d, err = s.p224.find(encoded)
	case "P-256":
		d, err = s.p256.find(encoded)
	case "P-384":
		d, err = s.p384.find(encoded)
	case "P-521":
		d, err = s.p521.find(encoded)
	default:
		return nil, false, nil
	}
	return d, true, err
}

// errTableNotReady: the curve's table is still being built.
var errTableNotReady = errors.New("small-key table not built yet")

// smallKeyLint runs the check the way zlint runs its lint: not applicable unless the certificate
// carries a well-formed ECDSA key on the curve.
func (s *smallKeyTables) lint(c *x509.Certificate) *lint.LintResult {
	var key *ecdsa.PublicKey
	if c.PublicKeyAlgorithm == x509.ECDSA {
		switch k := c.PublicKey.(type) {
		case *x509.AugmentedECDSA:
			key = k.Pub
		case *ecdsa.PublicKey:
			key = k
		}
	}
	if key == nil || key.Curve == nil || key.X == nil || key.Y == nil || !key.Curve.IsOnCurve(key.X, key.Y) {
		return &lint.LintResult{Status: lint.NA}
	}
	d, searched, err := s.smallDiscreteLog(key)
	if errors.Is(err, errTableNotReady) {
		return community.NewEcdsaSmallPrivateKey().(lint.CertificateLintInterface).Execute(c)
	}
	switch {
	case !searched:
		return &lint.LintResult{Status: lint.Pass} // as zlint: a curve without a name is not searched
	case err != nil:
		return &lint.LintResult{Status: lint.Fatal, Details: "small-key search: " + err.Error()}
	case d == nil:
		return &lint.LintResult{Status: lint.Pass}
	}
	return &lint.LintResult{
		Status: lint.Error,
		Details: fmt.Sprintf("the ECDSA private key is %s, or its negation modulo the group order, and so can be trivially recovered by anyone",
			d),
	}
}
