// The PostgreSQL JDBC driver through the Dynabase proxy: the tier's settings,
// a failed transaction rolled back, server-side prepared statements from the
// 5th execution on, batch inserts, a large result (whole and through a
// setFetchSize cursor), cancel, and the proxy's refusals (53300, 53400).

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGStatement;
import org.postgresql.util.PSQLException;
import org.postgresql.util.ServerErrorMessage;

public class ClientCheck {
    interface Check {
        void run() throws Exception;
    }

    static String env(String name) {
        String value = System.getenv(name);
        if (value == null || value.isEmpty()) {
            System.out.println("not ok - environment: " + name + " is not set (run tests/clients/run.sh)");
            System.exit(1);
        }
        return value;
    }

    static final String HOST = env("DYNABASE_CLIENT_HOST");
    static final String PORT = env("DYNABASE_CLIENT_PORT");
    static final String ROLE = env("DYNABASE_CLIENT_ROLE");
    static final String PASSWORD = env("DYNABASE_CLIENT_PASSWORD");
    static final String DATABASE = env("DYNABASE_CLIENT_DATABASE");
    static final String ORG = env("DYNABASE_CLIENT_ORG");
    static final String STATEMENT_TIMEOUT = env("DYNABASE_CLIENT_ORG_STATEMENT_TIMEOUT");
    static final String FREE_ORG = env("DYNABASE_CLIENT_FREE_ORG");
    static final int FREE_CONNECTIONS = Integer.parseInt(env("DYNABASE_CLIENT_FREE_CONNECTIONS"));
    static final String FREE_STATEMENT_TIMEOUT = env("DYNABASE_CLIENT_FREE_STATEMENT_TIMEOUT");

    static int failed = 0;

    static void check(String name, Check c) {
        try {
            c.run();
            System.out.println("ok - " + name);
        } catch (Throwable e) {
            failed++;
            String reason = (e.getClass().getSimpleName() + ": " + e.getMessage()).replaceAll("\\s+", " ");
            System.out.println("not ok - " + name + ": " + reason);
            if (System.getenv("DYNABASE_CLIENT_VERBOSE") != null) {
                e.printStackTrace();
            }
        }
        System.out.flush();
    }

    static void expect(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static void expectContains(String text, String part, String what) {
        if (text == null || !text.toLowerCase().contains(part.toLowerCase())) {
            throw new AssertionError(what + ": \"" + part + "\" not in \"" + text + "\"");
        }
    }

    static Connection connect(String org) throws SQLException {
        return connect(org, new Properties());
    }

    static Connection connect(String org, Properties props) throws SQLException {
        props.setProperty("user", ROLE + "." + org);
        props.setProperty("password", PASSWORD);
        props.setProperty("sslmode", "disable");
        props.setProperty("ApplicationName", "jdbc-check");
        props.setProperty("connectTimeout", "10");
        return DriverManager.getConnection("jdbc:postgresql://" + HOST + ":" + PORT + "/" + DATABASE, props);
    }

    static String one(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            expect(rs.next(), "no row from " + sql);
            return rs.getString(1);
        }
    }

    static String sqlState(Throwable e) {
        return e instanceof SQLException ? ((SQLException) e).getSQLState() : null;
    }

    static void expectError(String code, String what, Check c) throws Exception {
        try {
            c.run();
        } catch (SQLException e) {
            expect(code.equals(e.getSQLState()), what + ": SQLSTATE " + e.getSQLState() + ", expected " + code);
            return;
        }
        throw new AssertionError(what + ": no error");
    }

    // --- the main organization -------------------------------------------

    static void tierSettings(Connection conn) throws Exception {
        String timeout = one(conn, "SHOW statement_timeout");
        expect(STATEMENT_TIMEOUT.equals(timeout), "statement_timeout " + timeout + ", expected " + STATEMENT_TIMEOUT);
    }

    // By default the driver sends ApplicationName with a SET after the
    // startup (it assumes the server may be older than 9.0), which replaces
    // the application_name the proxy put in the StartupMessage. Told the
    // server is 9.0 or newer, it sends it at startup and the proxy's tag stays.
    static void applicationNameAtStartup() throws Exception {
        Properties props = new Properties();
        props.setProperty("assumeMinServerVersion", "9.0");
        try (Connection conn = connect(ORG, props)) {
            String app = one(conn, "SHOW application_name");
            expect(app.startsWith(ORG + "/") && app.endsWith("/jdbc-check"), "application_name " + app);
        }
    }

    static void transactionErrorThenRollback(Connection conn) throws Exception {
        conn.setAutoCommit(false);
        try (Statement st = conn.createStatement()) {
            st.execute("CREATE TEMP TABLE tx_check (id int PRIMARY KEY)");
            st.execute("INSERT INTO tx_check VALUES (1)");
            conn.commit();
            st.execute("INSERT INTO tx_check VALUES (2)");
            expectError("23505", "duplicate key", () -> st.execute("INSERT INTO tx_check VALUES (1)"));
            expectError("25P02", "query in a failed transaction", () -> st.execute("SELECT 1"));
            conn.rollback();
            String ids = one(conn, "SELECT array_agg(id ORDER BY id)::text FROM tx_check");
            expect("{1}".equals(ids), "rows after rollback " + ids);
            conn.commit();
        } finally {
            conn.setAutoCommit(true);
        }
    }

    static void preparedFromTheFifthExecution(Connection conn) throws Exception {
        String serverSide = "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT $1::int * 2'";
        try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int * 2")) {
            int threshold = ps.unwrap(PGStatement.class).getPrepareThreshold();
            expect(threshold == 5, "prepareThreshold " + threshold);
            for (int i = 1; i <= 200; i++) {
                ps.setInt(1, i);
                try (ResultSet rs = ps.executeQuery()) {
                    expect(rs.next() && rs.getInt(1) == i * 2, "execution " + i);
                }
                if (i <= 10) {
                    int named = Integer.parseInt(one(conn, serverSide));
                    int expected = i < threshold ? 0 : 1;
                    expect(named == expected, "after execution " + i + ": " + named + " server-side statements");
                }
            }
        }
    }

    static void batchInserts(Connection conn) throws Exception {
        conn.setAutoCommit(false);
        try (Statement st = conn.createStatement()) {
            st.execute("CREATE TEMP TABLE batch (id int PRIMARY KEY, note text)");
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO batch VALUES (?, ?)")) {
                for (int i = 0; i < 5000; i++) {
                    ps.setInt(1, i);
                    ps.setString(2, "row " + i);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                expect(counts.length == 5000, counts.length + " update counts");
                for (int c : counts) {
                    expect(c == 1 || c == Statement.SUCCESS_NO_INFO, "update count " + c);
                }
                conn.commit();
                // A batch with a duplicate key fails as a whole.
                for (int i : new int[] {5000, 5001, 7}) {
                    ps.setInt(1, i);
                    ps.setString(2, "again");
                    ps.addBatch();
                }
                try {
                    ps.executeBatch();
                    throw new AssertionError("a batch with a duplicate key succeeded");
                } catch (BatchUpdateException e) {
                    String state = sqlState(e.getNextException());
                    expect("23505".equals(state), "SQLSTATE " + state);
                }
                conn.rollback();
            }
            String count = one(conn, "SELECT count(*) FROM batch");
            expect("5000".equals(count), count + " rows");
            conn.commit();
        } finally {
            conn.setAutoCommit(true);
        }
    }

    static final String LARGE = "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g";

    static void largeResult(Connection conn) throws Exception {
        int rows = 0;
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(LARGE)) {
            while (rs.next()) {
                rows++;
                expect(rs.getInt(1) == rows && rs.getString(2).length() == 100, "row " + rows);
            }
        }
        expect(rows == 100_000, rows + " rows");
    }

    static void fetchSizeCursor(Connection conn) throws Exception {
        // With autocommit off and a fetch size, the driver reads the result
        // 1000 rows at a time from a portal (Execute with a row limit).
        conn.setAutoCommit(false);
        int rows = 0;
        try (Statement st = conn.createStatement()) {
            st.setFetchSize(1000);
            try (ResultSet rs = st.executeQuery(LARGE)) {
                while (rs.next()) {
                    rows++;
                }
            }
            conn.commit();
        } finally {
            conn.setAutoCommit(true);
        }
        expect(rows == 100_000, rows + " rows");
    }

    static void cancelLongQuery(Connection conn) throws Exception {
        ExecutorService pool = Executors.newSingleThreadExecutor();
        try (Statement st = conn.createStatement()) {
            long started = System.nanoTime();
            Future<?> sleeping = pool.submit(() -> st.execute("SELECT pg_sleep(30)"));
            Thread.sleep(500);
            st.cancel();
            try {
                sleeping.get(15, TimeUnit.SECONDS);
                throw new AssertionError("pg_sleep(30) completed");
            } catch (ExecutionException e) {
                String state = sqlState(e.getCause());
                expect("57014".equals(state), "SQLSTATE " + state + " (" + e.getCause() + ")");
            }
            double seconds = (System.nanoTime() - started) / 1e9;
            expect(seconds < 5, "cancelled after " + seconds + " s");
            expect("1".equals(one(conn, "SELECT 1")), "connection usable after cancel");
        } finally {
            pool.shutdownNow();
        }
    }

    // --- the FREE organization: refusals ----------------------------------

    static void connectionLimit(List<Connection> held) throws Exception {
        for (int i = 0; i < FREE_CONNECTIONS; i++) {
            held.add(connect(FREE_ORG));
        }
        try (Connection extra = connect(FREE_ORG)) {
            throw new AssertionError("the connection past the limit was admitted");
        } catch (PSQLException e) {
            ServerErrorMessage m = e.getServerErrorMessage();
            expect(m != null, "no server error message: " + e.getMessage());
            expect("53300".equals(m.getSQLState()), "SQLSTATE " + m.getSQLState());
            expect("FATAL".equals(m.getSeverity()), "severity " + m.getSeverity());
            expectContains(m.getMessage(), "connection limit reached", "message");
            expectContains(m.getMessage(), FREE_ORG, "message names the organization");
            expectContains(m.getMessage(), "tier FREE", "message names the tier");
            expectContains(m.getHint(), "upgrade to tier", "hint");
        }
    }

    static void rateLimit(List<Connection> held) throws Exception {
        expect(held.size() == FREE_CONNECTIONS, held.size() + " connections open");
        AtomicBoolean stop = new AtomicBoolean();
        AtomicReference<ServerErrorMessage> seen = new AtomicReference<>();
        AtomicReference<Throwable> other = new AtomicReference<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
        List<Thread> threads = new ArrayList<>();
        for (Connection c : held) {
            Thread t = new Thread(() -> {
                try (Statement st = c.createStatement()) {
                    while (!stop.get() && System.nanoTime() < deadline) {
                        try {
                            st.executeQuery("SELECT 1").close();
                        } catch (PSQLException e) {
                            if (!"53400".equals(e.getSQLState())) {
                                throw e;
                            }
                            seen.compareAndSet(null, e.getServerErrorMessage());
                            stop.set(true);
                        }
                    }
                } catch (Throwable e) {
                    other.compareAndSet(null, e);
                    stop.set(true);
                }
            });
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) {
            t.join(30_000);
        }
        expect(other.get() == null, "unexpected error: " + other.get());
        ServerErrorMessage m = seen.get();
        expect(m != null, "no query was refused in 15 s");
        expect("53400".equals(m.getSQLState()), "SQLSTATE " + m.getSQLState());
        expectContains(m.getMessage(), "rate limit", "message");
        expectContains(m.getMessage(), FREE_ORG, "message names the organization");
        expectContains(m.getMessage(), "tier FREE", "message names the tier");
        expectContains(m.getDetail(), "retry after", "detail");
        expectContains(m.getHint(), "upgrade to tier", "hint");
    }

    static void connectionsAfterRefusals(List<Connection> held) throws Exception {
        Thread.sleep(1500);
        for (Connection c : held) {
            expect("1".equals(one(c, "SELECT 1")), "SELECT 1");
            String timeout = one(c, "SHOW statement_timeout");
            expect(FREE_STATEMENT_TIMEOUT.equals(timeout), "FREE statement_timeout " + timeout);
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection conn = connect(ORG)) {
            check("tier settings visible (SHOW statement_timeout)", () -> tierSettings(conn));
            check("application_name names the organization (assumeMinServerVersion=9.0)",
                    ClientCheck::applicationNameAtStartup);
            check("transaction with an error, then rollback", () -> transactionErrorThenRollback(conn));
            check("server-side prepared statement from the 5th execution, reused 200 times",
                    () -> preparedFromTheFifthExecution(conn));
            check("batch inserts (5,000 rows; a failing batch rolled back)", () -> batchInserts(conn));
            check("large result (100,000 rows)", () -> largeResult(conn));
            check("setFetchSize cursor over 100,000 rows", () -> fetchSizeCursor(conn));
            check("cancel of a long query", () -> cancelLongQuery(conn));
        } catch (SQLException e) {
            failed++;
            System.out.println("not ok - connect as " + ROLE + "." + ORG + ": " + e.getMessage());
        }

        List<Connection> held = new ArrayList<>();
        try {
            check("connection " + (FREE_CONNECTIONS + 1) + " refused with 53300 and a hint",
                    () -> connectionLimit(held));
            check("queries past the QPS limit refused with 53400 and a hint", () -> rateLimit(held));
            check("connections work after the refusals", () -> connectionsAfterRefusals(held));
        } finally {
            for (Connection c : held) {
                c.close();
            }
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
