-- Valid native tag applications: the tag file's, or an item attribute's values standing in
-- for them (the native_tags_from_attribute var; see macros/native_tags.sql).
{%- set from_attribute = native_tags_attribute() %}

with

tag_file_rows as (

    select * from {{ ref('base_native_tags') }}

),

tag_file_tags as (

    select
        item_id,
        tag,
        user_id,
        tagged_at,
        'tag_file' as origin
    from tag_file_rows
    where rejection_reason is null

),

attribute_tags as (

    {%- if from_attribute.attribute is none %}

    select * from tag_file_tags
    where false

    {%- else %}

    -- an attribute states each value once, by nobody, at no known time
    select
        item_id,
        attribute_value as tag,
        cast(null as varchar) as user_id,
        cast(null as timestamp) as tagged_at,
        'attribute:{{ from_attribute.attribute }}' as origin
    from {{ ref('base_item_attributes') }}
    where rejection_reason is null
        and attribute_name = '{{ from_attribute.attribute }}'
        {%- if from_attribute.only_without_tag_file %}
        and not exists (select 1 from tag_file_rows)
        {%- endif %}

    {%- endif %}

),

chosen as (

    {%- if from_attribute.attribute is none or from_attribute.only_without_tag_file %}

    select * from tag_file_tags
    union all

    {%- endif %}

    select * from attribute_tags

),

final as (

    select
        item_id,
        tag,
        -- one spelling per tag: case, inner whitespace and surrounding punctuation vary
        -- between taggers ("Pixar", "pixar ", "pixar.")
        regexp_replace(
            regexp_replace(lower(tag), '\s+', ' ', 'g'),
            '^[[:punct:] ]+|[[:punct:] ]+$', '', 'g'
        ) as tag_normalized,
        user_id,
        tagged_at,
        origin
    from chosen

)

select * from final
