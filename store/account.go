package store

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"flotilla/api/errdefs"
)

// Account is a tenant.
type Account struct {
	ID                      string    `db:"id"`
	Login                   string    `db:"login"`
	Email                   string    `db:"email"`
	CompanyName             string    `db:"company_name"`
	FirstName               string    `db:"first_name"`
	LastName                string    `db:"last_name"`
	Address                 string    `db:"address"`
	PostalCode              string    `db:"postal_code"`
	City                    string    `db:"city"`
	State                   string    `db:"state"`
	Country                 string    `db:"country"`
	Phone                   string    `db:"phone"`
	Operator                bool      `db:"operator"`
	Disabled                bool      `db:"disabled"`
	ApprovedForProvisioning bool      `db:"approved_for_provisioning"`
	TritonCNSEnabled        bool      `db:"triton_cns_enabled"`
	DefaultNetwork          *string   `db:"default_network"`
	CreatedAt               time.Time `db:"created_at"`
	UpdatedAt               time.Time `db:"updated_at"`
}

const accountColumns = `id::text, login, email, company_name, first_name, last_name, address, postal_code, city,
	state, country, phone, operator, disabled, approved_for_provisioning, triton_cns_enabled,
	default_network::text, created_at, updated_at`

const sqlCreateAccount = `INSERT INTO accounts (id, login, email, operator, first_name, last_name, company_name, triton_cns_enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ` + accountColumns

// CreateAccount adds an account. A taken login is a Conflict.
func (s *Store) CreateAccount(ctx context.Context, a Account) (Account, error) {
	if a.ID == "" {
		a.ID = uuid.NewString()
	}
	rows, _ := s.pool.Query(ctx, sqlCreateAccount, a.ID, a.Login, a.Email, a.Operator, a.FirstName, a.LastName, a.CompanyName, a.TritonCNSEnabled)
	out, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Account])
	if err != nil {
		switch pgCode(err) {
		case sqlUniqueViolation:
			return Account{}, errdefs.Conflictf("account %q already exists", a.Login)
		case sqlCheckViolation:
			return Account{}, errdefs.InvalidArgument("invalid login %q: use 2-64 letters, digits, '_', '.', '-' or '@', starting with a letter", a.Login)
		}
		return Account{}, translate(err)
	}
	return out, nil
}

const sqlAccountByLogin = `SELECT ` + accountColumns + ` FROM accounts WHERE login = $1`

// AccountByLogin returns the account with that login, or NotFound.
func (s *Store) AccountByLogin(ctx context.Context, login string) (Account, error) {
	rows, _ := s.pool.Query(ctx, sqlAccountByLogin, login)
	a, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Account])
	if err != nil {
		return Account{}, notFound(err, "account "+login+" not found")
	}
	return a, nil
}

const sqlAccountByID = `SELECT ` + accountColumns + ` FROM accounts WHERE id = $1`

// AccountByID returns the account with that id, or NotFound.
func (s *Store) AccountByID(ctx context.Context, id string) (Account, error) {
	if !validUUID(id) {
		return Account{}, errdefs.NotFoundf("account %s not found", id)
	}
	rows, _ := s.pool.Query(ctx, sqlAccountByID, id)
	a, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Account])
	if err != nil {
		return Account{}, notFound(err, "account not found")
	}
	return a, nil
}

// AccountUpdate holds the fields UpdateAccount may change; nil means unchanged.
type AccountUpdate struct {
	Email, CompanyName, FirstName, LastName, Address, PostalCode, City, State, Country, Phone *string
	TritonCNSEnabled                                                                          *bool
	DefaultNetwork                                                                            *string
}

const sqlUpdateAccount = `UPDATE accounts SET
	email = COALESCE($2, email), company_name = COALESCE($3, company_name),
	first_name = COALESCE($4, first_name), last_name = COALESCE($5, last_name),
	address = COALESCE($6, address), postal_code = COALESCE($7, postal_code), city = COALESCE($8, city),
	state = COALESCE($9, state), country = COALESCE($10, country), phone = COALESCE($11, phone),
	triton_cns_enabled = COALESCE($12, triton_cns_enabled),
	default_network = COALESCE($13::uuid, default_network), updated_at = now()
WHERE id = $1 RETURNING ` + accountColumns

// UpdateAccount changes an account's profile. A change of
// triton_cns_enabled is announced on the change feed (kind "account"), which
// the CNS server follows.
func (s *Store) UpdateAccount(ctx context.Context, id string, u AccountUpdate) (Account, error) {
	var a Account
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, sqlUpdateAccount, id, u.Email, u.CompanyName, u.FirstName, u.LastName,
			u.Address, u.PostalCode, u.City, u.State, u.Country, u.Phone, u.TritonCNSEnabled, u.DefaultNetwork)
		var err error
		if a, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Account]); err != nil {
			return notFound(err, "account not found")
		}
		if u.TritonCNSEnabled == nil {
			return nil
		}
		return appendChange(ctx, tx, Change{Kind: "account", ObjectID: a.ID, OwnerID: &a.ID, Action: "update",
			Detail: map[string]any{"triton_cns_enabled": a.TritonCNSEnabled}, WakeWatchers: true})
	})
	if err != nil {
		return Account{}, err
	}
	return a, nil
}

const sqlListAccounts = `SELECT ` + accountColumns + ` FROM accounts ORDER BY login`

// ListAccounts returns every account (operators only).
func (s *Store) ListAccounts(ctx context.Context) ([]Account, error) {
	rows, _ := s.pool.Query(ctx, sqlListAccounts)
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Account])
	return out, translate(err)
}

func validUUID(s string) bool {
	_, err := uuid.Parse(s)
	return err == nil && len(s) == 36
}

// accountWithKeys is an account row with its keys' OpenSSH texts.
type accountWithKeys struct {
	Account
	Keys []string
}

const sqlAccountWithKeys = `SELECT ` + accountColumns + `,
	ARRAY(SELECT key_text FROM keys WHERE owner_id = accounts.id ORDER BY created_at, name)
FROM accounts WHERE id = $1`

// AccountWithKeys returns an account and its public keys (OpenSSH text), in
// one round trip: what a create needs to check the account and fill in
// root_authorized_keys.
func (s *Store) AccountWithKeys(ctx context.Context, id string) (Account, []string, error) {
	if !validUUID(id) {
		return Account{}, nil, errdefs.NotFoundf("account %s not found", id)
	}
	rows, _ := s.pool.Query(ctx, sqlAccountWithKeys, id)
	a, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[accountWithKeys])
	if err != nil {
		return Account{}, nil, notFound(err, "account not found")
	}
	return a.Account, a.Keys, nil
}
