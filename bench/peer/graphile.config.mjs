// PostGraphile v5 for bench/vs_postgraphile.py: the amber preset as shipped, plus the
// connection-filter preset so that q3 can ask for `status in (DUE, OVERDUE)` as Deskbill
// does. Connection string and schema come from the command line (-c, -s).
//
// PgIndexBehaviorsPlugin is off because v5 otherwise hides relations whose foreign key
// has no matching index (payments reference invoices by (invoice_id, account_id), which
// is indexed on invoice_id alone), and q1/q2 need `payments`. v4 ignores indexes by
// default, so both versions now expose the same relations.
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { PostGraphileConnectionFilterPreset } from "postgraphile-plugin-connection-filter";

export default {
  extends: [PostGraphileAmberPreset, PostGraphileConnectionFilterPreset],
  disablePlugins: ["PgIndexBehaviorsPlugin"],
};
