import { writeFileSync } from 'node:fs';
import path from 'node:path';

/** Write an L2FLOW_CONFIG file in `dir` that configures the two SQL children `run` requires; returns its path. */
export function writeChildrenConfig(dir: string): string {
  const file = path.join(dir, 'l2flow.yaml');
  writeFileSync(
    file,
    `children:
  wf_data_preparation_for_reports: { kind: sql, statement: "select $1::date" }
  l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: sql, statement: "select $1::date" }
`,
  );
  return file;
}
