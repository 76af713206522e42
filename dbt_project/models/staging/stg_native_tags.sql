with

checked as (

    select * from {{ ref('base_native_tags') }}

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
        tagged_at
    from checked
    where rejection_reason is null

)

select * from final
