// The same work as bench/tenants.lua, with golang.org/x/oauth2 (Debian's
// golang-golang-x-oauth2-dev): N client-credentials token sources of N
// accounts, each holding a 390-byte token (no network). Prints one JSON
// object: RSS and Go heap per client holding a token, then microseconds to
// make one (median of 5 rounds of 20,000). bench/bench.lua builds and runs
// it where Go is installed:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run bench/go_tenants.go [N]
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

var access = "eyJhbGciOiJIUzI1NiJ9." + strings.Repeat("eyJzdWIiOiJmaXhlZCJ9", 16) + "." +
	strings.Repeat("c2lnbmF0dXJl", 4)

const refresh = "01h4gdx2tctxfjgacbdwrcvs5d1688473602892"

// A tenant: its account (Nomba's accountId header: x/oauth2 has no place
// for it), its configuration and a token source that keeps its token
// (oauth2.ReuseTokenSource, as oauth2.NewClient uses).
type tenant struct {
	account string
	cfg     *clientcredentials.Config
	ts      oauth2.TokenSource
}

func newTenant(ctx context.Context, i int, tok *oauth2.Token) tenant {
	cfg := &clientcredentials.Config{
		ClientID:     fmt.Sprintf("client-%06d", i),
		ClientSecret: fmt.Sprintf("secret-%06d-0123456789abcdef", i),
		TokenURL:     "https://127.0.0.1:9/v1/auth/token/issue",
	}
	return tenant{fmt.Sprintf("acct-%06d", i), cfg, oauth2.ReuseTokenSource(tok, cfg.TokenSource(ctx))}
}

func rssBytes() float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	pages, _ := strconv.ParseFloat(f[1], 64)
	return pages * float64(os.Getpagesize())
}

func heapBytes() float64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc)
}

func main() {
	n := 100000
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	ctx := context.Background()
	keep := make([]tenant, n)
	heap0, rss0 := heapBytes(), rssBytes()
	for i := range keep {
		// each its own token: strings made per tenant, as ours are
		tok := &oauth2.Token{AccessToken: string([]byte(access)), RefreshToken: string([]byte(refresh)),
			TokenType: "Bearer", Expiry: time.Now().Add(30 * time.Minute)}
		keep[i] = newTenant(ctx, i, tok)
		if t, err := keep[i].ts.Token(); err != nil || t.AccessToken != access {
			panic("the kept token is not returned")
		}
	}
	heap, rss := (heapBytes()-heap0)/float64(n), (rssBytes()-rss0)/float64(n)
	runtime.KeepAlive(keep)

	rounds := make([]float64, 5)
	const m = 20000
	for r := range rounds {
		made := make([]tenant, m)
		t0 := time.Now()
		for i := range made {
			made[i] = newTenant(ctx, i, nil)
		}
		rounds[r] = float64(time.Since(t0).Nanoseconds()) / m / 1000
		runtime.KeepAlive(made)
	}
	sort.Float64s(rounds)
	out, _ := json.Marshal(map[string]interface{}{
		"clients": n, "rss_bytes_per_client": rss, "heap_bytes_per_client": heap, "new_us": rounds[2],
		"go": runtime.Version(),
	})
	fmt.Println(string(out))
}
