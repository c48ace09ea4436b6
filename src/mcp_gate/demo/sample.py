"""The demo's sample database: customers with PII, orders, payments; a few thousand rows.

Generated inside PostgreSQL with generate_series and a fixed seed, so it loads in well under
a second and is the same every time. The values look real but are not: card numbers pass the
Luhn check, SSNs avoid the ranges the SSA never issues, emails use example domains.
"""

from __future__ import annotations

import asyncpg

READER_ROLE = "gate_reader"
WRITER_ROLE = "gate_writer"

SCHEMA = """
CREATE TABLE customers (
    id          integer PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    phone       text,
    ssn         text,
    card_number text,
    country     text NOT NULL,
    created_at  timestamptz NOT NULL
);
COMMENT ON TABLE customers IS 'People who buy from us. email, phone, ssn and card_number are PII.';

CREATE TABLE orders (
    id          integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers(id),
    status      text NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled')),
    total       numeric(10, 2) NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX orders_customer_idx ON orders(customer_id);
COMMENT ON TABLE orders IS 'One row per order.';

CREATE TABLE payments (
    id          integer PRIMARY KEY,
    order_id    integer NOT NULL REFERENCES orders(id),
    amount      numeric(10, 2) NOT NULL,
    method      text NOT NULL,
    iban        text,
    paid_at     timestamptz NOT NULL
);
CREATE INDEX payments_order_idx ON payments(order_id);
COMMENT ON TABLE payments IS 'Payments against orders; iban is set for bank transfers.';
"""

# A Luhn-valid 16-digit card number from a 15-digit body: PostgreSQL computes the check digit.
DATA = """
SELECT setseed(0.42);

CREATE FUNCTION pg_temp.luhn(body text) RETURNS text LANGUAGE sql AS $$
  SELECT body || ((10 - (sum(d) % 10)) % 10)::text
  FROM (
    SELECT CASE WHEN (length(body) - i) % 2 = 0
                THEN (CASE WHEN substr(body, i, 1)::int * 2 > 9
                           THEN substr(body, i, 1)::int * 2 - 9
                           ELSE substr(body, i, 1)::int * 2 END)
                ELSE substr(body, i, 1)::int END AS d
    FROM generate_series(1, length(body)) AS i
  ) AS digits
$$;

INSERT INTO customers
SELECT i,
       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken','Margaret','Niklaus'])
         [1 + (i % 10)] || ' ' ||
       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson',
              'Hamilton','Wirth','Ritchie','Kay'])[1 + (i * 7 % 12)],
       lower((ARRAY['ada','grace','alan','edsger','barbara','donald','frances','ken','margaret',
                    'niklaus'])[1 + (i % 10)]) || '.' || i || '@'
         || (ARRAY['example.com','example.org','example.net'])[1 + (i % 3)],
       '+1-555-' || lpad((100 + i % 900)::text, 3, '0') || '-'
         || lpad((i * 37 % 10000)::text, 4, '0'),
       lpad((100 + i % 565)::text, 3, '0') || '-' || lpad((10 + i % 89)::text, 2, '0') || '-'
         || lpad((1000 + i * 13 % 9000)::text, 4, '0'),
       pg_temp.luhn('4' || lpad((i * 7919 % 100000000000000)::text, 14, '0')),
       (ARRAY['US','GB','DE','FR','NL','SE','CA','JP'])[1 + (i % 8)],
       timestamptz '2024-01-01' + (i * interval '37 minutes')
FROM generate_series(1, 2000) AS i;

INSERT INTO orders
SELECT i,
       1 + (i * 31 % 2000),
       (ARRAY['pending','paid','shipped','cancelled'])[1 + (i % 4)],
       round((5 + random() * 495)::numeric, 2),
       timestamptz '2024-02-01' + (i * interval '23 minutes')
FROM generate_series(1, 5000) AS i;

INSERT INTO payments
SELECT o.id,
       o.id,
       o.total,
       CASE WHEN o.id % 5 = 0 THEN 'bank_transfer' ELSE 'card' END,
       CASE WHEN o.id % 5 = 0
            THEN 'DE89370400440532013' || lpad((o.id % 1000)::text, 3, '0') END,
       o.created_at + interval '2 hours'
FROM orders o WHERE o.status IN ('paid', 'shipped');

ANALYZE;
"""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def load_sample(
    admin_dsn: str,
    database: str,
    reader_pw: str,
    writer_pw: str,
    *,
    reader: str = READER_ROLE,
    writer: str = WRITER_ROLE,
) -> None:
    """Create `database` with the sample data and the gateway's two roles.

    The reader may only SELECT (the gateway's read path); the writer may change rows
    (approved writes); neither may create objects or read the catalog beyond the defaults.
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {_quote(database)}")
        for role, pw in ((reader, reader_pw), (writer, writer_pw)):
            await conn.execute(
                f"CREATE ROLE {_quote(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                f"NOINHERIT PASSWORD '{pw.replace(chr(39), chr(39) * 2)}'"
            )
    finally:
        await conn.close()
    db_dsn = admin_dsn.rsplit("/", 1)[0] + "/" + database
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.execute(DATA)
        db, reader, writer = _quote(database), _quote(reader), _quote(writer)
        await conn.execute(
            f"""
            REVOKE ALL ON DATABASE {db} FROM PUBLIC;
            REVOKE CREATE ON SCHEMA public FROM PUBLIC;
            GRANT CONNECT ON DATABASE {db} TO {reader}, {writer};
            GRANT USAGE ON SCHEMA public TO {reader}, {writer};
            GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader};
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {writer};
            """
        )
    finally:
        await conn.close()
