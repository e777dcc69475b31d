package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"math/big"
	"testing"

	"github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3/lint"
	"github.com/zmap/zlint/v3/lints/community"
)

// certWithKey is a certificate carrying d*G (or -d*G), all the lints look at.
func certWithKey(curve elliptic.Curve, d *big.Int, negative bool) *x509.Certificate {
	x, y := curve.ScalarBaseMult(d.Bytes()) //nolint:staticcheck // test key material
	if negative {
		y = new(big.Int).Sub(curve.Params().P, y)
	}
	return &x509.Certificate{PublicKeyAlgorithm: x509.ECDSA, PublicKey: &ecdsa.PublicKey{Curve: curve, X: x, Y: y}}
}

// zlintResult runs zlint's own e_ecdsa_small_private_key the way the registry would.
func zlintResult(c *x509.Certificate) *lint.LintResult {
	l := community.NewEcdsaSmallPrivateKey().(lint.CertificateLintInterface)
	if !l.CheckApplies(c) {
		return &lint.LintResult{Status: lint.NA}
	}
	return l.Execute(c)
}

func TestSmallKeyBoundIsZlintDefault(t *testing.T) {
	raw, err := json.Marshal(community.NewEcdsaSmallPrivateKey().(lint.Configurable).Configure())
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct{ Bits int }
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg.Bits != smallKeyBits {
		t.Fatalf("zlint's default bound is %s, the stand-in uses %d bits", raw, smallKeyBits)
	}
}

// TestSmallKeyMatchesZlint: same status and details as zlint's lint for small, boundary, negated and
// random keys on every curve it searches.
func TestSmallKeyMatchesZlint(t *testing.T) {
	tables := builtTables()
	stride := int64(2*babySteps + 1)
	var scalars []*big.Int
	for _, d := range []int64{1, 2, 3, 7, 255, 256, 257, 4096, babySteps - 1, babySteps, babySteps + 1,
		stride - 1, stride, stride + 1, 2 * stride, 2*stride + babySteps, 40000, 65535, 65536, 65537, 70000, 1 << 20} {
		scalars = append(scalars, big.NewInt(d))
	}
	for _, curve := range []elliptic.Curve{elliptic.P224(), elliptic.P256(), elliptic.P384(), elliptic.P521()} {
		all := append([]*big.Int{}, scalars...)
		for i := 0; i < 4; i++ {
			k, err := rand.Int(rand.Reader, curve.Params().N)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, k.Add(k, big.NewInt(1)))
		}
		for _, d := range all {
			for _, negative := range []bool{false, true} {
				c := certWithKey(curve, d, negative)
				want, got := zlintResult(c), tables.lint(c)
				if want.Status != got.Status || want.Details != got.Details {
					t.Errorf("%s d=%s negative=%v: zlint %v %q, stand-in %v %q",
						curve.Params().Name, d, negative, want.Status, want.Details, got.Status, got.Details)
				}
			}
		}
	}
}

func TestSmallKeyNotApplicableWithoutEcdsaKey(t *testing.T) {
	tables := newSmallKeyTables()
	if got := tables.lint(&x509.Certificate{PublicKeyAlgorithm: x509.RSA}); got.Status != lint.NA {
		t.Fatalf("RSA certificate: %v", got.Status)
	}
}

func BenchmarkSmallKeyP256(b *testing.B) {
	tables := builtTables()
	k, _ := rand.Int(rand.Reader, elliptic.P256().Params().N)
	c := certWithKey(elliptic.P256(), k.Add(k, big.NewInt(1)), false)
	tables.lint(c)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tables.lint(c)
	}
}

// builtTables has every curve's table ready, so the tests exercise the stand-in's own search.
func builtTables() *smallKeyTables {
	s := newSmallKeyTables()
	s.p224.build()
	s.p256.build()
	s.p384.build()
	s.p521.build()
	return s
}

// TestSmallKeyAnswersWhileTheTableIsBuilt: before its table is ready, zlint's search answers.
func TestSmallKeyAnswersWhileTheTableIsBuilt(t *testing.T) {
	tables := newSmallKeyTables()
	weak := certWithKey(elliptic.P256(), big.NewInt(12345), true)
	if got := tables.lint(weak); got.Status != lint.Error || tables.p256.ready.Load() && got.Details == "" {
		t.Fatalf("first lint of a weak key: %v %q", got.Status, got.Details)
	}
	tables.p256.build() // waits for the background build the first lint started
	if !tables.p256.ready.Load() {
		t.Fatal("the table is not ready after build")
	}
	if got, want := tables.lint(weak), zlintResult(weak); got.Status != want.Status || got.Details != want.Details {
		t.Fatalf("after the build: %v %q, zlint %v %q", got.Status, got.Details, want.Status, want.Details)
	}
}
