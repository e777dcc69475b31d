// Command ckms-lint is the ckms pre-issuance linter: a long-lived helper that
// lints DER certificates and CRLs with zlint v3 and answers over stdin/stdout.
//
// Why a helper process: the CA (Python) lints every certificate and CRL before
// the HSM signs it (Boulder's design: lint a copy signed with a throwaway key,
// sign the real one only if no error/fatal finding). Starting a process per
// certificate or using pkilint is too slow for the issuance target, so one
// process stays up and requests are pipelined through it.
//
// Protocol (all integers big-endian):
//
//	request  = kind (1 byte) || length (4 bytes) || payload
//	           kind 'C' certificate DER, 'R' CRL DER, 'P' ping (payload ignored)
//	response = length (4 bytes) || JSON
//	           {"ok":bool,"findings":[{"lint","status","details","source"}],"parse_error":str|null}
//
// Exactly one response is written per request, in request order, and flushed
// as soon as it is ready (answers ready at the same moment share one write). Findings list only results that are not pass/NA/NE;
// "ok" is false if there is an error or fatal finding or a parse error. A ping
// answers {"ok":true,...,"info":{...}} with the version, sources and lint counts.
// A malformed frame (unknown kind, oversized length) is a protocol error: the
// helper writes a message to stderr and exits 2, because the stream cannot be
// resynchronised. Lints run on -workers goroutines; output order is preserved.
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"

	"github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// defaultSources are the lint sources relevant to a private CA: the IETF RFCs
// and zlint's community lints. CA/Browser Forum, root-program (Mozilla, Apple,
// Chrome) and ETSI lints are left out: they would flag a private device CA for
// not being a publicly-trusted WebPKI/eIDAS CA.
// (RFC6960 is absent: its only lint is an OCSP-response lint, and OCSP is not linted here.)
const defaultSources = "RFC3279,RFC5280,RFC5480,RFC5891,RFC6962,RFC8813,Community"

// defaultExclude names lints skipped even though their source is selected.
// e_cert_issued_by_compromised_emudhra_ca verifies every ECDSA signature
// against eight compromised public-CA keys (~6 ms, 20x all other lints
// together); it can never fire for a private CA, least of all on a copy
// signed with a throwaway key.
const defaultExclude = "e_cert_issued_by_compromised_emudhra_ca"

// maxFrame bounds a request payload (large CRLs fit; a corrupt length does not).
const maxFrame = 64 << 20

type finding struct {
	Lint    string `json:"lint"`
	Status  string `json:"status"`
	Details string `json:"details"`
	Source  string `json:"source"`
}

type response struct {
	OK         bool           `json:"ok"`
	Findings   []finding      `json:"findings"`
	ParseError *string        `json:"parse_error"`
	Info       map[string]any `json:"info,omitempty"`
}

func main() {
	sources := flag.String("sources", defaultSources, "comma-separated zlint lint sources to run")
	exclude := flag.String("exclude", defaultExclude, "comma-separated lint names to skip")
	workers := flag.Int("workers", runtime.GOMAXPROCS(0), "lints run concurrently (responses stay in order)")
	list := flag.Bool("list", false, "print the selected lints (name, source) and exit")
	flag.Parse()
	// Lint garbage is short-lived and the live heap is a few MB: collecting at 5x rather than 2x
	// the live heap cuts the helper's CPU per certificate by about a quarter. GOGC still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}

	reg, smallKey, err := registry(*sources, *exclude)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ckms-lint:", err)
		os.Exit(2)
	}
	if *list {
		for _, l := range reg.CertificateLints().Lints() {
			fmt.Printf("certificate\t%s\t%s\n", l.Source, l.Name)
		}
		if smallKey != nil {
			fmt.Printf("certificate\t%s\t%s\n", smallKey.meta.Source, smallKey.meta.Name)
		}
		for _, l := range reg.RevocationListLints().Lints() {
			fmt.Printf("crl\t%s\t%s\n", l.Source, l.Name)
		}
		return
	}
	if err := serve(os.Stdin, os.Stdout, &linter{reg: reg, smallKey: smallKey}, max(*workers, 1)); err != nil {
		fmt.Fprintln(os.Stderr, "ckms-lint:", err)
		os.Exit(2)
	}
}

// registry filters zlint's global registry down to the requested sources,
// minus the excluded lint names (an unknown name is an error, not a no-op).
// Names are checked against the sources the registry actually has for
// certificate and CRL lints (zlint's own SourceList parser misses some).
// When the selection holds e_ecdsa_small_private_key, zlint's copy is left out
// and the returned smallKeyStandIn runs the same check faster (smallkey.go).
func registry(raw, exclude string) (lint.Registry, *smallKeyStandIn, error) {
	global := lint.GlobalRegistry()
	known := map[lint.LintSource]bool{}
	for _, s := range global.Sources() {
		known[s] = true
	}
	var want lint.SourceList
	for _, s := range strings.Split(raw, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !known[lint.LintSource(s)] {
			return nil, nil, fmt.Errorf("unknown lint source %q (known: %v)", s, global.Sources())
		}
		want = append(want, lint.LintSource(s))
	}
	if len(want) == 0 {
		return nil, nil, errors.New("no lint sources selected")
	}
	var skip []string
	for _, name := range strings.Split(exclude, ",") {
		if name = strings.TrimSpace(name); name != "" {
			skip = append(skip, name)
		}
	}
	reg, err := global.Filter(lint.FilterOptions{IncludeSources: want, ExcludeNames: skip})
	if err != nil {
		return nil, nil, err
	}
	original := reg.CertificateLints().ByName(smallKeyLintName)
	if original == nil {
		return reg, nil, nil
	}
	reg, err = global.Filter(lint.FilterOptions{IncludeSources: want, ExcludeNames: append(skip, smallKeyLintName)})
	return reg, &smallKeyStandIn{meta: original.LintMetadata, tables: newSmallKeyTables()}, err
}

// linter is what a request is linted with: the filtered zlint registry and, in place of zlint's
// small-key lint, its faster stand-in.
type linter struct {
	reg      lint.Registry
	smallKey *smallKeyStandIn
}

// smallKeyStandIn carries the replaced lint's metadata (name, source) for its findings.
type smallKeyStandIn struct {
	meta   lint.LintMetadata
	tables *smallKeyTables
}

// serve reads requests, lints them on a worker pool and writes the responses
// in request order. It returns nil on a clean EOF between frames.
func serve(in io.Reader, out io.Writer, l *linter, workers int) error {
	r := bufio.NewReaderSize(in, 1<<16)
	w := bufio.NewWriterSize(out, 1<<16)
	// order carries one result channel per request, in arrival order; the
	// writer drains it in that order, so parallel linting keeps FIFO output.
	order := make(chan chan []byte, 4*workers)
	sem := make(chan struct{}, workers)
	writeErr := make(chan error, 1)
	go func() {
		var err error
		for ch := range order {
			var body []byte
			select {
			case body = <-ch:
			default: // the next answer is not ready: send what is buffered before waiting for it
				if err == nil {
					err = w.Flush()
				}
				body = <-ch
			}
			if err == nil {
				var hdr [4]byte
				binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
				if _, err = w.Write(hdr[:]); err == nil {
					_, err = w.Write(body)
				}
				// Answers that are ready together leave in one write; none waits for a later lint.
				if err == nil && len(order) == 0 {
					err = w.Flush()
				}
			}
		}
		writeErr <- err
	}()

	readErr := func() error {
		var hdr [5]byte
		for {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return fmt.Errorf("reading request header: %w", err)
			}
			kind, n := hdr[0], binary.BigEndian.Uint32(hdr[1:])
			if kind != 'C' && kind != 'R' && kind != 'P' {
				return fmt.Errorf("protocol error: unknown request kind %q", kind)
			}
			if n > maxFrame {
				return fmt.Errorf("protocol error: request of %d bytes exceeds %d", n, maxFrame)
			}
			der := make([]byte, n)
			if _, err := io.ReadFull(r, der); err != nil {
				return fmt.Errorf("reading request body: %w", err)
			}
			ch := make(chan []byte, 1)
			order <- ch
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				ch <- encode(handle(kind, der, l))
				if kind == 'R' {
					// A CRL grows with the revocations (100,000 entries parse into tens of MB) and
					// GOGC=400 would keep five times that as heap between collections, so the
					// helper's RSS would follow the largest CRL it ever saw. Collect and return the
					// memory after each CRL instead: one full GC (a few ms) per publication.
					debug.FreeOSMemory()
				}
			}()
		}
	}()
	close(order)
	if err := <-writeErr; err != nil && readErr == nil {
		return fmt.Errorf("writing response: %w", err)
	}
	return readErr
}

// handle lints one request. A parse failure or a panic inside a lint becomes
// an ok=false response instead of killing the helper. The lints are run here
// one by one (as zlint.LintCertificateEx does) so that only findings are kept:
// no result map of every lint per certificate.
func handle(kind byte, der []byte, l *linter) (resp response) {
	defer func() {
		if p := recover(); p != nil {
			resp = failed(fmt.Sprintf("linter panic: %v", p))
		}
	}()
	reg := l.reg
	config := reg.GetConfiguration()
	resp = response{OK: true, Findings: []finding{}}
	switch kind {
	case 'P':
		sources := reg.Sources()
		sort.Sort(sources)
		certificateLints := len(reg.CertificateLints().Lints())
		if l.smallKey != nil {
			certificateLints++
		}
		return response{OK: true, Findings: []finding{}, Info: map[string]any{
			"zlint_version": zlint.Version, "sources": sources,
			"certificate_lints": certificateLints,
			"crl_lints":         len(reg.RevocationListLints().Lints()),
		}}
	case 'C':
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return failed("certificate: " + err.Error())
		}
		for _, cl := range reg.CertificateLints().Lints() {
			resp.add(cl.LintMetadata, cl.Execute(c, config))
		}
		if l.smallKey != nil {
			resp.add(l.smallKey.meta, l.smallKey.tables.lint(c))
		}
	case 'R':
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return failed("crl: " + err.Error())
		}
		for _, rl := range reg.RevocationListLints().Lints() {
			resp.add(rl.LintMetadata, rl.Execute(crl, config))
		}
	}
	sort.Slice(resp.Findings, func(i, j int) bool { return resp.Findings[i].Lint < resp.Findings[j].Lint })
	return resp
}

// add keeps a result that is not pass/NA/NE; an error or fatal one makes the response not ok.
func (resp *response) add(meta lint.LintMetadata, res *lint.LintResult) {
	switch res.Status {
	case lint.Pass, lint.NA, lint.NE:
		return
	case lint.Error, lint.Fatal:
		resp.OK = false
	}
	resp.Findings = append(resp.Findings, finding{
		Lint: meta.Name, Status: res.Status.String(), Details: res.Details, Source: string(meta.Source),
	})
}

func failed(msg string) response {
	return response{OK: false, Findings: []finding{}, ParseError: &msg}
}

func encode(resp response) []byte {
	body, err := json.Marshal(resp)
	if err != nil { // cannot happen for these types; still answer the request
		body = []byte(`{"ok":false,"findings":[],"parse_error":"ckms-lint: cannot encode response"}`)
	}
	return body
}
