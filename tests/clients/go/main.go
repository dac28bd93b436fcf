// pgx (v5) through the Dynabase proxy: the tier's settings, a failed
// transaction rolled back, the extended protocol with pgx's statement cache
// (one server-side statement reused), CopyFrom, a batch, a large result,
// cancel, and the proxy's refusals (53300, 53400) seen through pgxpool.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

func env(name string) string {
	value := os.Getenv(name)
	if value == "" {
		fmt.Printf("not ok - environment: %s is not set (run tests/clients/run.sh)\n", name)
		os.Exit(1)
	}
	return value
}

var (
	host                 = env("DYNABASE_CLIENT_HOST")
	port                 = env("DYNABASE_CLIENT_PORT")
	role                 = env("DYNABASE_CLIENT_ROLE")
	password             = env("DYNABASE_CLIENT_PASSWORD")
	database             = env("DYNABASE_CLIENT_DATABASE")
	org                  = env("DYNABASE_CLIENT_ORG")
	statementTimeout     = env("DYNABASE_CLIENT_ORG_STATEMENT_TIMEOUT")
	freeOrg              = env("DYNABASE_CLIENT_FREE_ORG")
	freeConnections, _   = strconv.Atoi(env("DYNABASE_CLIENT_FREE_CONNECTIONS"))
	freeStatementTimeout = env("DYNABASE_CLIENT_FREE_STATEMENT_TIMEOUT")
)

var failed int

func check(name string, fn func() error) {
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return fn()
	}()
	if err != nil {
		failed++
		fmt.Printf("not ok - %s: %s\n", name, strings.Join(strings.Fields(err.Error()), " "))
		return
	}
	fmt.Printf("ok - %s\n", name)
}

func connString(org string) string {
	return fmt.Sprintf("host=%s port=%s user=%s.%s password=%s dbname=%s sslmode=disable connect_timeout=10 application_name=pgx-check",
		host, port, role, org, password, database)
}

func contains(text, part, what string) error {
	if !strings.Contains(strings.ToLower(text), strings.ToLower(part)) {
		return fmt.Errorf("%s: %q not in %q", what, part, text)
	}
	return nil
}

func pgError(err error) *pgconn.PgError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr
	}
	return nil
}

func expectCode(err error, code, what string) error {
	if err == nil {
		return fmt.Errorf("%s: no error", what)
	}
	if e := pgError(err); e == nil || e.Code != code {
		return fmt.Errorf("%s: %v, expected SQLSTATE %s", what, err, code)
	}
	return nil
}

func queryString(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, sql string) (string, error) {
	var s string
	err := q.QueryRow(ctx, sql).Scan(&s)
	return s, err
}

// --- the main organization ------------------------------------------------

func tierSettings(ctx context.Context, pool *pgxpool.Pool) error {
	timeout, err := queryString(ctx, pool, "SHOW statement_timeout")
	if err != nil {
		return err
	}
	if timeout != statementTimeout {
		return fmt.Errorf("statement_timeout %q, expected %q", timeout, statementTimeout)
	}
	app, err := queryString(ctx, pool, "SHOW application_name")
	if err != nil {
		return err
	}
	if !strings.Contains(app, org) || !strings.HasSuffix(app, "pgx-check") {
		return fmt.Errorf("application_name %q", app)
	}
	return nil
}

func transactionErrorThenRollback(ctx context.Context, conn *pgxpool.Conn) error {
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE tx_check (id int PRIMARY KEY)"); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "INSERT INTO tx_check VALUES (1)"); err != nil {
		return err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := tx.Exec(ctx, "INSERT INTO tx_check VALUES ($1)", 2); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "INSERT INTO tx_check VALUES ($1)", 1)
	if err := expectCode(err, "23505", "duplicate key"); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "SELECT 1")
	if err := expectCode(err, "25P02", "query in a failed transaction"); err != nil {
		return err
	}
	if err := tx.Rollback(ctx); err != nil {
		return err
	}
	var ids []int32
	if err := conn.QueryRow(ctx, "SELECT array_agg(id ORDER BY id) FROM tx_check").Scan(&ids); err != nil {
		return err
	}
	if len(ids) != 1 || ids[0] != 1 {
		return fmt.Errorf("rows after rollback %v", ids)
	}
	return nil
}

func preparedStatementReused(ctx context.Context, conn *pgxpool.Conn) error {
	// pgx's default mode prepares each query once per connection (its
	// statement cache) and runs it with Bind/Execute afterwards.
	for i := 0; i < 200; i++ {
		var n int
		var s string
		if err := conn.QueryRow(ctx, "SELECT $1::int * 2, $2::text", i, fmt.Sprint("n", i)).Scan(&n, &s); err != nil {
			return err
		}
		if n != i*2 || s != fmt.Sprint("n", i) {
			return fmt.Errorf("execution %d: %d %q", i, n, s)
		}
	}
	var named int
	err := conn.QueryRow(ctx,
		"SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int * 2, $2::text'").Scan(&named)
	if err != nil {
		return err
	}
	if named != 1 {
		return fmt.Errorf("%d server-side prepared statements for the query", named)
	}
	return nil
}

func copyFrom(ctx context.Context, conn *pgxpool.Conn) error {
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE copied (id int, name text, at timestamptz)"); err != nil {
		return err
	}
	at := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)
	rows := make([][]any, 20000)
	for i := range rows {
		rows[i] = []any{int32(i), fmt.Sprintf("name %d, with a comma", i), at}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"id", "name", "at"}, pgx.CopyFromRows(rows))
	if err != nil {
		return err
	}
	if n != 20000 {
		return fmt.Errorf("copied %d rows", n)
	}
	var sum int64
	if err := conn.QueryRow(ctx, "SELECT sum(id) FROM copied WHERE at = $1", at).Scan(&sum); err != nil {
		return err
	}
	if sum != 19999*20000/2 {
		return fmt.Errorf("sum %d", sum)
	}
	return nil
}

func batch(ctx context.Context, conn *pgxpool.Conn) error {
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE batched (id int PRIMARY KEY)"); err != nil {
		return err
	}
	b := &pgx.Batch{}
	for i := 0; i < 100; i++ {
		b.Queue("INSERT INTO batched VALUES ($1)", i)
	}
	b.Queue("SELECT count(*) FROM batched")
	br := conn.SendBatch(ctx, b)
	for i := 0; i < 100; i++ {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return fmt.Errorf("batched insert %d: %w", i, err)
		}
	}
	var count int
	if err := br.QueryRow().Scan(&count); err != nil {
		br.Close()
		return err
	}
	if err := br.Close(); err != nil {
		return err
	}
	if count != 100 {
		return fmt.Errorf("count %d in the batch", count)
	}
	// A batch with a failing statement: the batch runs in one implicit
	// transaction, so nothing of it stays.
	b = &pgx.Batch{}
	b.Queue("INSERT INTO batched VALUES (1000)")
	b.Queue("INSERT INTO batched VALUES (1)")
	err := conn.SendBatch(ctx, b).Close()
	if err := expectCode(err, "23505", "duplicate key in a batch"); err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM batched").Scan(&count); err != nil {
		return err
	}
	if count != 100 {
		return fmt.Errorf("count %d after the failed batch", count)
	}
	return nil
}

func largeResult(ctx context.Context, conn *pgxpool.Conn) error {
	rows, err := conn.Query(ctx, "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g")
	if err != nil {
		return err
	}
	defer rows.Close()
	count := 0
	for rows.Next() {
		var g int
		var s string
		if err := rows.Scan(&g, &s); err != nil {
			return err
		}
		count++
		if g != count || len(s) != 100 {
			return fmt.Errorf("row %d: %d", count, g)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if count != 100000 {
		return fmt.Errorf("%d rows", count)
	}
	return nil
}

func cancelLongQuery(ctx context.Context, conn *pgxpool.Conn) error {
	started := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(ctx, "SELECT pg_sleep(30)")
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	if err := conn.Conn().PgConn().CancelRequest(ctx); err != nil {
		return fmt.Errorf("CancelRequest: %w", err)
	}
	select {
	case err := <-done:
		if err := expectCode(err, "57014", "cancelled query"); err != nil {
			return err
		}
	case <-time.After(15 * time.Second):
		return errors.New("the cancelled query did not return within 15 s")
	}
	if s := time.Since(started); s > 5*time.Second {
		return fmt.Errorf("cancelled after %v", s)
	}
	one, err := queryString(ctx, conn, "SELECT '1'")
	if err != nil || one != "1" {
		return fmt.Errorf("connection unusable after cancel: %v", err)
	}
	return nil
}

// --- the FREE organization: refusals -----------------------------------------

func connectionLimit(ctx context.Context, pool *pgxpool.Pool) error {
	held := make([]*pgxpool.Conn, 0, freeConnections)
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	for i := 0; i < freeConnections; i++ {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("pool connection %d: %w", i+1, err)
		}
		held = append(held, c)
	}
	extra, err := pgx.Connect(ctx, connString(freeOrg))
	if err == nil {
		extra.Close(ctx)
		return errors.New("the connection past the limit was admitted")
	}
	e := pgError(err)
	if e == nil {
		return fmt.Errorf("no PgError: %v", err)
	}
	if e.Code != "53300" || e.Severity != "FATAL" {
		return fmt.Errorf("%s %s, expected FATAL 53300", e.Severity, e.Code)
	}
	for _, c := range []error{
		contains(e.Message, "connection limit reached", "message"),
		contains(e.Message, freeOrg, "message names the organization"),
		contains(e.Message, "tier FREE", "message names the tier"),
		contains(e.Hint, "upgrade to tier", "hint"),
	} {
		if c != nil {
			return c
		}
	}
	return nil
}

func rateLimit(ctx context.Context, pool *pgxpool.Pool) error {
	held := make([]*pgxpool.Conn, 0, freeConnections)
	defer func() {
		for _, c := range held {
			c.Release()
		}
	}()
	for i := 0; i < freeConnections; i++ {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	var (
		mu    sync.Mutex
		seen  *pgconn.PgError
		other error
		wg    sync.WaitGroup
	)
	stop := make(chan struct{})
	var once sync.Once
	deadline := time.Now().Add(15 * time.Second)
	for _, c := range held {
		wg.Add(1)
		go func(c *pgxpool.Conn) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				default:
				}
				var one int
				err := c.QueryRow(ctx, "SELECT 1").Scan(&one)
				if err == nil {
					continue
				}
				mu.Lock()
				if e := pgError(err); e != nil && e.Code == "53400" {
					if seen == nil {
						seen = e
					}
				} else if other == nil {
					other = err
				}
				mu.Unlock()
				once.Do(func() { close(stop) })
				return
			}
		}(c)
	}
	wg.Wait()
	if other != nil {
		return fmt.Errorf("unexpected error: %w", other)
	}
	if seen == nil {
		return errors.New("no query was refused in 15 s")
	}
	for _, c := range []error{
		contains(seen.Message, "rate limit", "message"),
		contains(seen.Message, freeOrg, "message names the organization"),
		contains(seen.Message, "tier FREE", "message names the tier"),
		contains(seen.Detail, "retry after", "detail"),
		contains(seen.Hint, "upgrade to tier", "hint"),
	} {
		if c != nil {
			return c
		}
	}
	return nil
}

func poolAfterRefusals(ctx context.Context, pool *pgxpool.Pool) error {
	time.Sleep(1500 * time.Millisecond)
	for i := 0; i < freeConnections; i++ {
		var one int
		if err := pool.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			return err
		}
	}
	timeout, err := queryString(ctx, pool, "SHOW statement_timeout")
	if err != nil {
		return err
	}
	if timeout != freeStatementTimeout {
		return fmt.Errorf("FREE statement_timeout %q", timeout)
	}
	if total := pool.Stat().TotalConns(); total != int32(freeConnections) {
		return fmt.Errorf("pool has %d connections, expected %d", total, freeConnections)
	}
	return nil
}

func newPool(ctx context.Context, org string, max int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(connString(org))
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = max
	return pgxpool.NewWithConfig(ctx, cfg)
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	pool, err := newPool(ctx, org, 5)
	if err != nil {
		fmt.Printf("not ok - pool for %s.%s: %v\n", role, org, err)
		os.Exit(1)
	}
	check("tier settings visible (SHOW statement_timeout)", func() error { return tierSettings(ctx, pool) })
	conn, err := pool.Acquire(ctx)
	if err != nil {
		fmt.Printf("not ok - connect as %s.%s: %v\n", role, org, err)
		os.Exit(1)
	}
	check("transaction with an error, then rollback", func() error { return transactionErrorThenRollback(ctx, conn) })
	check("extended protocol: one prepared statement reused 200 times", func() error { return preparedStatementReused(ctx, conn) })
	check("CopyFrom of 20,000 rows", func() error { return copyFrom(ctx, conn) })
	check("batch of 101 queries; a failing batch rolled back", func() error { return batch(ctx, conn) })
	check("large result (100,000 rows)", func() error { return largeResult(ctx, conn) })
	check("cancel of a long query", func() error { return cancelLongQuery(ctx, conn) })
	conn.Release()
	pool.Close()

	free, err := newPool(ctx, freeOrg, int32(freeConnections))
	if err != nil {
		fmt.Printf("not ok - pool for %s.%s: %v\n", role, freeOrg, err)
		os.Exit(1)
	}
	check(fmt.Sprintf("connection %d refused with 53300 and a hint", freeConnections+1),
		func() error { return connectionLimit(ctx, free) })
	check("queries past the QPS limit refused with 53400 and a hint", func() error { return rateLimit(ctx, free) })
	check("pool works after the refusals", func() error { return poolAfterRefusals(ctx, free) })
	free.Close()

	if failed > 0 {
		os.Exit(1)
	}
}
